"""Checking a createTask body against the model's published request schema."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA: dict[str, Any] = json.loads(
    resources.files(__package__).joinpath("schema/qwen-image-to-image.json").read_text(encoding="utf-8")
)
_VALIDATOR = Draft202012Validator(SCHEMA)
_INPUT_PROPERTIES: dict[str, Any] = SCHEMA["properties"]["input"]["properties"]


def _field_of(error: Any) -> str:
    path = [str(part) for part in error.absolute_path]
    if error.validator == "required":
        missing = re.match(r"'(.+?)' is a required property", error.message)
        path.append(missing.group(1) if missing else "?")
    return ".".join(path) or "(body)"


def create_request_problem(body: Any) -> str | None:
    """The first rule ``body`` breaks, as ``field: what is wrong``; ``None`` when it is valid."""
    errors = sorted(_VALIDATOR.iter_errors(body), key=lambda error: [str(part) for part in error.absolute_path])
    if errors:
        return f"{_field_of(errors[0])}: {errors[0].message}"
    for name, value in body["input"].items():
        step = _INPUT_PROPERTIES.get(name, {}).get("x-step")
        if step is not None and isinstance(value, int | float) and not isinstance(value, bool):
            steps = value / step
            if abs(steps - round(steps)) > 1e-9 * max(1.0, abs(steps)):
                return f"input.{name}: {value} is not a multiple of {step}"
    return None
