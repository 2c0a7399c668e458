"""
Requests that tasks and triggers sign for the provider's app: read bounded, and checked before anything else.

The run budgets' ledger and the deliveries a trigger waits for are reached this way. Anyone can
reach them, so a request is trusted only once the connection it names is allowed and its
signature (:func:`~airflow_provider_qwen.api_server.signing.request_signature`, under that
connection's API key) is right and fresh: only a holder of the key, who can spend the account's
credits anyway, is answered.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import Request

from airflow.providers.common.compat.sdk import AirflowNotFoundException

from airflow_provider_qwen.api_server.callbacks import BodyTooLarge, read_bounded
from airflow_provider_qwen.api_server.refusals import connection_refusal
from airflow_provider_qwen.api_server.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    request_signature,
    same_signature,
    timestamp_problem,
)
from airflow_provider_qwen.exceptions import ApikleyConfigurationError

#: Seconds a signed request stays acceptable after its timestamp (and how far ahead a clock may be).
MAX_AGE_SECONDS = 300


class Refused(Exception):
    """The request is refused (401); the reason is for the log, never for the caller."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind


class ConnectionUnreadable(RuntimeError):
    """Reading the connection failed on Airflow's side: an outage, answered 503, never a refusal."""


class NotAJsonObject(ValueError):
    """The body is not a JSON object (400)."""


async def read_json_object(request: Request, limit: int) -> tuple[bytes, dict[str, Any]]:
    """
    Return the request's body, read no further than ``limit`` bytes, and the JSON object it holds.

    :raises BodyTooLarge: past ``limit`` (413).
    :raises NotAJsonObject: when it is not one.
    """
    body = await read_bounded(request, limit)
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        raise NotAJsonObject("the body must be a JSON object")
    return body, payload


def signature_headers(request: Request) -> tuple[str | None, str | None]:
    """Return a request's timestamp and signature headers."""
    return request.headers.get(TIMESTAMP_HEADER), request.headers.get(SIGNATURE_HEADER)


def authenticate(conn_id: object, path: str, body: bytes, timestamp: str | None, signature: str | None) -> None:
    """
    Check that the request is signed with the API key of the connection it names, and fresh.

    :raises Refused: for a connection id of the wrong shape or not allowed, a connection that is
        missing or not an Apikley one, a missing, stale or wrong signature.
    :raises ConnectionUnreadable: when the connection could not be read (a secrets backend or database fault).
    """
    from airflow_provider_qwen.hooks.apikley import ApikleyHook

    if not isinstance(conn_id, str):
        raise Refused("no conn_id string in the body", "connection not allowed")
    if refusal := connection_refusal(conn_id):
        raise Refused(refusal, "connection not allowed")
    if not timestamp or not signature:
        raise Refused(f"unsigned request for connection {conn_id!r}", "unsigned")
    if problem := timestamp_problem(timestamp, MAX_AGE_SECONDS, time.time()):
        what, reason = problem
        raise Refused(f"request for connection {conn_id!r} refused: {what}", reason)
    try:
        api_key = ApikleyHook(conn_id).settings.api_key
    except (AirflowNotFoundException, ApikleyConfigurationError) as err:
        raise Refused(f"connection {conn_id!r} is not a usable Apikley connection", "connection unusable") from err
    except Exception as err:
        raise ConnectionUnreadable(f"connection {conn_id!r} could not be read") from err
    if not same_signature(request_signature(api_key, path, timestamp, body), signature):
        raise Refused(f"bad signature for connection {conn_id!r}", "signature")


__all__ = [
    "MAX_AGE_SECONDS",
    "BodyTooLarge",
    "ConnectionUnreadable",
    "NotAJsonObject",
    "Refused",
    "authenticate",
    "read_json_object",
    "signature_headers",
]
