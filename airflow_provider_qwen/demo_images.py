"""
Moved to :mod:`airflow_provider_qwen.demo.images`; this name keeps working until the next release.

Nothing is imported until a name is asked for, so the provider's package root never loads Pillow.
"""

from __future__ import annotations

import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):  # the import system's own questions (``__path__``...), not a moved name
        raise AttributeError(name)
    from airflow_provider_qwen.demo import images

    warnings.warn(
        f"airflow_provider_qwen.demo_images.{name} moved to airflow_provider_qwen.demo.images.{name}",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(images, name)
