"""
A local Apikley: the same API, real (if simple) pictures for its models (:data:`MODELS`), and faults on demand.

It validates requests against the model's published schema on its own, without the provider's
models, so a mistake on one side cannot hide behind the same mistake on the other. It imports
nothing from the rest of the package, nor Airflow.

>>> from airflow_provider_qwen.emulator import EmulatorSettings, run_emulator
>>> with run_emulator(EmulatorSettings(latency=(0.05, 0.05, 0.1))) as emulator:  # doctest: +SKIP
...     print(emulator.base_url, emulator.upload_base_url)
"""

from __future__ import annotations

try:
    import PIL  # noqa: F401
except ImportError as err:  # the one package of the extra Airflow does not bring
    raise ImportError(
        "The Apikley emulator needs the emulator extra: pip install 'airflow-provider-qwen[emulator]'"
    ) from err

from airflow_provider_qwen.emulator.app import create_app
from airflow_provider_qwen.emulator.models import IMAGE_TO_IMAGE, MODELS, TEXT_TO_IMAGE
from airflow_provider_qwen.emulator.server import RunningEmulator, run_emulator
from airflow_provider_qwen.emulator.settings import EmulatorSettings, Faults
from airflow_provider_qwen.emulator.state import EmulatorState

__all__ = [
    "IMAGE_TO_IMAGE",
    "MODELS",
    "TEXT_TO_IMAGE",
    "EmulatorSettings",
    "EmulatorState",
    "Faults",
    "RunningEmulator",
    "create_app",
    "run_emulator",
]
