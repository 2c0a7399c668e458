"""
A local Apikley: the same API, real (if simple) image edits, and faults on demand.

It validates requests against the model's published schema on its own, without the provider's
models, so a mistake on one side cannot hide behind the same mistake on the other.
"""

from __future__ import annotations

from airflow_provider_qwen.emulator.app import create_app
from airflow_provider_qwen.emulator.server import RunningEmulator, run_emulator
from airflow_provider_qwen.emulator.settings import EmulatorSettings, Faults

__all__ = ["EmulatorSettings", "Faults", "RunningEmulator", "create_app", "run_emulator"]
