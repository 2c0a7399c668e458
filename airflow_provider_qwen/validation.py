"""
The checks of what a user or an answer gives us, before anything is sent or written.

Task ids, model names, ``input`` dicts (against a JSON Schema, when given), callback and result
URLs: each check names the field, the value and the rule. The hooks, operators, sensor and
api-server use them; :mod:`airflow_provider_qwen.models` builds its typed shapes on them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from airflow_provider_qwen.exceptions import ApikleyInputError
from airflow_provider_qwen.redaction import shown_url
from airflow_provider_qwen.safe_text import CONTROL_CHARACTERS

#: What an Apikley task id looks like (real ones are 32 hex characters). Ids arrive from outside
#: (answers, callbacks, DAG arguments) and become file names, log lines and query strings, so
#: nothing else is accepted anywhere.
TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
TASK_ID_RULE = "must be 1 to 128 letters, digits, '-' or '_'"


def is_http_url(value: object) -> TypeGuard[str]:
    """
    Whether ``value`` is an absolute ``http://`` or ``https://`` URL with a host (and a valid port, if any).

    A string with a control character (which a URL never holds) is not one.
    """
    if not isinstance(value, str) or CONTROL_CHARACTERS.search(value):
        return False
    parts = urlsplit(value)
    try:
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        return False


def is_task_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a string shaped like an Apikley task id (:data:`TASK_ID_PATTERN`)."""
    return isinstance(value, str) and TASK_ID_PATTERN.fullmatch(value) is not None


#: What a model name looks like: words of letters, digits, ``.``, ``_`` and ``-``, separated by ``/``.
MODEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._:-]*)*")
MODEL_RULE = (
    "must be an Apikley model name such as 'qwen/text-to-image': words of letters, digits, '.', '_' or '-' "
    "separated by '/', at most 128 characters"
)
#: The largest ``input`` sent, as JSON: Apikley's inputs are prompts and URLs, never file contents.
MAX_INPUT_BYTES = 64 * 1024


def check_model(value: object) -> str:
    """
    Return ``value``, a model name.

    :raises ApikleyInputError: unless ``value`` is shaped like an Apikley model name.
    """
    if not isinstance(value, str) or len(value) > 128 or not MODEL_PATTERN.fullmatch(value):
        raise ApikleyInputError(f"model={value!r}: {MODEL_RULE}")
    return value


def check_input(model: str, value: object, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    Return ``value`` as the ``input`` of a ``model`` task.

    That is a JSON object of at most 64 KiB, valid against ``schema`` (a JSON Schema) when one is
    given. Which fields a model takes is otherwise Apikley's to check (a refusal is an
    :class:`~airflow_provider_qwen.exceptions.ApikleyValidationError`).

    :raises ApikleyInputError: naming each field that breaks a rule, its value and the rule.
    """
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise ApikleyInputError(f"input={_shown(value)}: must be a JSON object (a dict with string keys)")
    try:
        size = len(json.dumps(value, allow_nan=False).encode())
    except (TypeError, ValueError) as err:
        raise ApikleyInputError(f"input={_shown(value)}: must hold JSON values only ({err})") from None
    if size > MAX_INPUT_BYTES:
        raise ApikleyInputError(f"input ({size} bytes as JSON): must be at most {MAX_INPUT_BYTES} bytes")
    if schema is not None:
        from jsonschema import Draft202012Validator

        problems = [
            f"input.{'.'.join(str(part) for part in error.absolute_path) or '(object)'}={_shown(error.instance)}: "
            f"{error.message}"
            for error in sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: list(map(str, e.path)))
        ]
        if problems:
            raise ApikleyInputError(f"Invalid input for {model}: " + "; ".join(problems))
    return value


def load_input_schema(schema: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """
    Return a JSON Schema for a model's ``input``: ``schema`` itself, or read from the JSON file it names.

    :raises ApikleyInputError: when the file cannot be read or the schema is not a valid JSON Schema.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if isinstance(schema, dict):
        loaded = schema
    else:
        try:
            loaded = json.loads(Path(schema).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ApikleyInputError(f"input_schema={str(schema)!r}: must be a readable JSON file ({err})") from None
    try:
        Draft202012Validator.check_schema(loaded)
    except SchemaError as err:
        raise ApikleyInputError(f"input_schema: must be a valid JSON Schema ({err.message})") from None
    return loaded


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def check_callback_url(value: object) -> str | None:
    """
    ``value`` as a ``callback_url`` Apikley can call back: an absolute http(s) URL, or ``None``.

    A relative URL is what :func:`~airflow_provider_qwen.api_server.urls.callback_url` builds when
    ``[api] base_url`` is not set, and Apikley refuses it only after the task is paid for.

    :raises ApikleyInputError: naming the value and the rule.
    """
    if value is None or is_http_url(value):
        return value
    hint = " (set [api] base_url to this Airflow's address as Apikley reaches it)" if str(value).startswith("/") else ""
    raise ApikleyInputError(f"callback_url={shown_url(value)}: must be an absolute http:// or https:// URL{hint}")


def check_task_id(value: object) -> str:
    """
    ``value`` as a task id given by a user (an operator or sensor argument).

    :raises ApikleyInputError: naming the value and the rule, when it is not shaped like a task id.
    """
    task_id = value.strip() if isinstance(value, str) else value
    if not is_task_id(task_id):
        raise ApikleyInputError(f"apikley_task_id={value!r}: {TASK_ID_RULE}")
    return task_id
