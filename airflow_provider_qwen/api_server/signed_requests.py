"""
Requests that tasks and triggers sign with their connection's API key: how the provider's app reads and checks them.

The run budgets' ledger (:mod:`~airflow_provider_qwen.api_server.budgets`), the create pace
(:mod:`~airflow_provider_qwen.api_server.create_pace`) and the deliveries a trigger waits for
(:mod:`~airflow_provider_qwen.api_server.awaited`) take requests from anyone who reaches the
api-server, so each is read the same way before it is acted on:

- The body is read up to the endpoint's limit (413 past it) and must be a JSON object (400).
- Its ``conn_id`` must be shaped like a connection id (and listed in ``[apikley]
  callback_connections`` when that is set) before the connection is read; a connection that is not
  of type ``apikley`` is never used.
- ``X-Apikley-Signature`` must be :func:`~airflow_provider_qwen.api_server.signing.request_signature`
  of the endpoint's path, ``X-Apikley-Timestamp`` (at most :data:`MAX_AGE_SECONDS` off) and the
  whole body, under that connection's API key: only a holder of the key, who can spend its
  credits anyway, acts for the connection, and a request cannot be moved to another endpoint or
  connection. Every refusal is the same bare 401; the reason goes to the api-server's log only.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

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

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from airflow_provider_qwen.api_server.refusals import RefusalLog
    from airflow_provider_qwen.hooks.connection import ApikleySettings

#: Seconds a signed request stays acceptable after its timestamp (and how far ahead a clock may be).
MAX_AGE_SECONDS = 300


class Refused(Exception):
    """The request is refused (401); the reason is for the log, never for the caller."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind


class BadField(Exception):
    """A field of a signed request breaks a rule (422); the message names it."""


class ConnectionUnreadable(RuntimeError):
    """Reading the connection failed on Airflow's side: an outage, answered 503, never a refusal."""


class Unreadable(Exception):
    """
    The body cannot be taken at all, before anything is checked.

    :param status: 413 for a body over the limit, 400 for one that is not a JSON object.
    :param detail: what the caller is told.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def read_json_object(request: Request, max_bytes: int, *, allow_nan: bool = True) -> tuple[bytes, dict[str, Any]]:
    """
    Return the request's body, read no further than ``max_bytes``, and the JSON object it holds.

    :param allow_nan: take ``NaN`` and ``Infinity``, which Python's JSON reads as numbers (an endpoint
        with no number to take refuses them here, where one with numbers names the field).
    :raises Unreadable: when the body is over ``max_bytes``, not JSON, or not an object.
    """
    try:
        body = await read_bounded(request, max_bytes)
    except BodyTooLarge:
        raise Unreadable(413, f"body larger than {max_bytes} bytes") from None
    try:
        payload = json.loads(body) if allow_nan else json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        raise Unreadable(400, "the body must be a JSON object" + ("" if allow_nan else ", without NaN or Infinity"))
    return body, payload


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def signature_headers(request: Request) -> tuple[str | None, str | None]:
    """Return a request's timestamp and signature headers, as :func:`authenticate` takes them."""
    return request.headers.get(TIMESTAMP_HEADER), request.headers.get(SIGNATURE_HEADER)


def authenticate(
    conn_id: object, path: str, body: bytes, timestamp: str | None, signature: str | None
) -> ApikleySettings:
    """
    Check that the request is signed with the API key of the connection it names, and fresh.

    :return: the connection's settings, read once for the check and for what the endpoint needs of them.
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
        settings = ApikleyHook(conn_id).settings
    except (AirflowNotFoundException, ApikleyConfigurationError) as err:
        raise Refused(f"connection {conn_id!r} is not a usable Apikley connection", "connection unusable") from err
    except Exception as err:
        raise ConnectionUnreadable(f"connection {conn_id!r} could not be read") from err
    if not same_signature(request_signature(settings.api_key, path, timestamp, body), signature):
        raise Refused(f"bad signature for connection {conn_id!r}", "signature")
    return settings


async def answer_signed(
    request: Request,
    path: str,
    max_bytes: int,
    act: Callable[[ApikleySettings, dict[str, Any]], Awaitable[dict[str, Any] | Response]],
    *,
    what: str,
    refusals: RefusalLog,
    log: logging.Logger,
    outages: tuple[type[Exception], ...],
    outage_detail: str,
    allow_nan: bool = True,
) -> Response:
    """
    Answer a signed request to ``path``: read it, check it, then answer what ``act`` returns.

    ``act`` gets the connection's settings and the request's fields once the signature is right; it
    returns the answer's JSON, or a response of its own. A request that cannot be read is answered
    413 or 400, a refusal a bare 401 (the reason logged at most once a minute per kind), a
    :class:`BadField` 422 naming the field, and one of ``outages`` (or a connection that could not be
    read) 503 with ``outage_detail``, logged as an error.

    :param what: what the endpoint is, for the log: ``"budget"``, ``"create pace"``...
    """
    try:
        body, payload = await read_json_object(request, max_bytes, allow_nan=allow_nan)
    except Unreadable as unreadable:
        return JSONResponse({"detail": unreadable.detail}, status_code=unreadable.status)
    try:
        settings = await run_in_threadpool(
            authenticate, payload.get("conn_id"), path, body, *signature_headers(request)
        )
        answer = await act(settings, payload)
    except Refused as refusal:
        refusals.warning(refusal.kind, f"Apikley {what} request refused: %s", refusal)
        return Response(status_code=401)
    except BadField as err:
        return JSONResponse({"detail": str(err)}, status_code=422)
    except Exception as fault:
        if not isinstance(fault, (*outages, ConnectionUnreadable)):
            raise
        log.error("Apikley %s request: %s", what, fault, exc_info=fault.__cause__)
        return JSONResponse({"detail": outage_detail}, status_code=503)
    return answer if isinstance(answer, Response) else JSONResponse(answer)
