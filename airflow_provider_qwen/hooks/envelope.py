"""
Reading Apikley's answers: ``{"code": int, "msg": str, "data": ...}``.

The body's ``code`` is authoritative (Apikley answers HTTP 200 with an error code in the body),
but a proxy's HTML error page or an HTTP error with a "success" body is an error too. The same
function serves the sync and the async client.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from airflow_provider_qwen.exceptions import (
    ApikleyBadResponseError,
    ApikleyError,
    ApikleyNotFoundError,
    error_class_for_code,
)
from airflow_provider_qwen.safe_text import escape_controls

EXCERPT_CHARS = 200
#: The longest ``msg`` of Apikley's quoted in an error.
MESSAGE_CHARS = 500
#: The largest API answer read; Apikley's are a few KB, so more means something is wrong.
MAX_ANSWER_BYTES = 1024 * 1024


def check_answer_size(size: int) -> None:
    """
    Refuse an answer that has grown too large to read.

    :raises ApikleyBadResponseError: once an answer has grown past :data:`MAX_ANSWER_BYTES`.
    """
    if size > MAX_ANSWER_BYTES:
        raise ApikleyBadResponseError(f"Apikley's answer is larger than {MAX_ANSWER_BYTES} bytes; refused")


def decode_json(body: bytes, charset: str | None = None) -> tuple[str | None, Any]:
    """
    Return the text and the JSON value of an answer from outside; ``None`` for what cannot be read.

    Never raises: an unknown charset, bytes that are not text in it, and JSON nested too deep to
    parse all give ``None``.
    """
    try:
        text = body.decode(charset or "utf-8")
    except (LookupError, UnicodeDecodeError):
        return None, None
    try:
        return text, json.loads(text)
    except (ValueError, RecursionError):
        return text, None


def parse_envelope(http_status: int, body: bytes, charset: str | None = None, retry_after: str | None = None) -> object:
    """
    Return the ``data`` of a successful answer, or raise the error the answer describes.

    :param http_status: the answer's HTTP status.
    :param body: the answer's body, as sent.
    :param charset: the charset the answer declares; UTF-8 when it declares none.
    :param retry_after: the ``Retry-After`` header, if any.
    :raises ApikleyError: the subclass that matches the body's code (or the HTTP status); an answer
        that is not the envelope (not JSON, not text in its charset, nested too deep) is an
        :class:`ApikleyBadResponseError` unless its HTTP status says more. The envelope's ``msg`` is
        quoted on one line, its control characters escaped, and the error's ``from_envelope`` is set.
    """
    text, payload = decode_json(body, charset)
    if not isinstance(payload, dict) or not isinstance(payload.get("code"), int):
        error_class = error_class_for_code(http_status) if http_status >= 400 else ApikleyBadResponseError
        if error_class is ApikleyError:
            error_class = ApikleyBadResponseError
        shown = excerpt(text) if text is not None else f"{len(body)} bytes that are not {charset or 'utf-8'} text"
        raise error_class(
            f"Apikley answered HTTP {http_status} with a body that is not its JSON envelope: {shown!r}",
            code=http_status,
            http_status=http_status,
            retry_after=parse_retry_after(retry_after),
        )

    code = payload["code"]
    message = escape_controls(excerpt(str(payload.get("msg") or payload.get("message") or ""), MESSAGE_CHARS))
    if code == 200 and http_status < 400:
        return payload.get("data")

    effective_code = code if code != 200 else http_status
    error_class = error_class_for_code(effective_code)
    if effective_code == 422 and "recordinfo is null" in message.lower():
        error_class = ApikleyNotFoundError
    error = error_class(
        f"Apikley answered code {effective_code} (HTTP {http_status}): {message or 'no message'}",
        code=effective_code,
        http_status=http_status,
        retry_after=parse_retry_after(retry_after),
    )
    error.from_envelope = True
    raise error


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """Return the start of ``text`` on one line, for error messages."""
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None
