"""Checking a createTask body against its model's published request schema, a JSON file (see :mod:`~.models`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from airflow_provider_qwen.emulator.models import MODELS

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


_VALIDATORS = {name: Draft202012Validator(model.schema, format_checker=_formats) for name, model in MODELS.items()}
#: What a body needs before its model's schema can be chosen: a model the emulator serves.
_MODEL_CHOICE = Draft202012Validator(
    {"type": "object", "required": ["model"], "properties": {"model": {"type": "string", "enum": list(MODELS)}}}
)


def _field_of(error: ValidationError) -> str:
    path = [str(part) for part in error.absolute_path]
    if error.validator == "required":
        missing = re.match(r"'(.+?)' is a required property", error.message)
        path.append(missing.group(1) if missing else "?")
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        path.extend([name for name in error.instance if name not in known][:1])
    return ".".join(path) or "(body)"


def _first_problem(validator: Draft202012Validator, body: Any) -> str | None:
    errors = sorted(validator.iter_errors(body), key=lambda error: [str(part) for part in error.absolute_path])
    if errors:
        return f"{_field_of(errors[0])}: {errors[0].message}"
    return None


def _off_step(properties: Mapping[str, Any], name: str, value: Any) -> str | None:
    step = properties.get(name, {}).get("x-step")
    if step is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    steps = value / step
    if abs(steps - round(steps)) > STEP_TOLERANCE:
        return f"input.{name}: {value} is not a multiple of the step {step}"
    return None


def create_request_problem(body: Any) -> str | None:
    """
    Return the first rule a createTask body breaks, as ``field: what is wrong``.

    The model comes first, since it chooses the schema: a missing or unknown one is the problem
    (``model: 'x/y' is not one of [...]``, listing the models served), whatever else is wrong.

    :return: ``None`` when the body is valid.
    """
    model = body.get("model") if isinstance(body, dict) else None
    if not (isinstance(model, str) and model in MODELS):
        return _first_problem(_MODEL_CHOICE, body) or f"model: {model!r} is not one of {list(MODELS)}"
    problem = _first_problem(_VALIDATORS[model], body)
    if problem:
        return problem
    properties = MODELS[model].input_properties
    for name, value in body["input"].items():
        problem = _off_step(properties, name, value)
        if problem:
            return problem
    return None
