"""Checking a createTask body against the model's published request schema, kept as a JSON file."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

SCHEMA: dict[str, Any] = json.loads(
    resources.files(__package__).joinpath("schema/qwen-image-to-image.json").read_text(encoding="utf-8")
)
MODEL: str = SCHEMA["properties"]["model"]["enum"][0]
INPUT_PROPERTIES: dict[str, Any] = SCHEMA["properties"]["input"]["properties"]
#: The documented default of every input field that has one.
INPUT_DEFAULTS: dict[str, Any] = {name: spec["default"] for name, spec in INPUT_PROPERTIES.items() if "default" in spec}

#: Steps are counted in units of the step; a count this close to a whole number is a multiple.
STEP_TOLERANCE = 1e-6

_formats = FormatChecker(formats=())


@_formats.checks("uri", raises=ValueError)
def _is_absolute_url(value: object) -> bool:
    # jsonschema only checks "uri" with an optional package installed: check it here, without one.
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return bool(parts.scheme and parts.netloc)


_VALIDATOR = Draft202012Validator(SCHEMA, format_checker=_formats)


def _field_of(error: ValidationError) -> str:
    path = [str(part) for part in error.absolute_path]
    if error.validator == "required":
        missing = re.match(r"'(.+?)' is a required property", error.message)
        path.append(missing.group(1) if missing else "?")
    return ".".join(path) or "(body)"


def _off_step(name: str, value: Any) -> str | None:
    step = INPUT_PROPERTIES.get(name, {}).get("x-step")
    if step is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    steps = value / step
    if abs(steps - round(steps)) > STEP_TOLERANCE:
        return f"input.{name}: {value} is not a multiple of the step {step}"
    return None


def create_request_problem(body: Any) -> str | None:
    """
    The first rule a createTask body breaks, as ``field: what is wrong``.

    :return: ``None`` when the body is valid.
    """
    errors = sorted(_VALIDATOR.iter_errors(body), key=lambda error: [str(part) for part in error.absolute_path])
    if errors:
        return f"{_field_of(errors[0])}: {errors[0].message}"
    for name, value in body["input"].items():
        problem = _off_step(name, value)
        if problem:
            return problem
    return None
