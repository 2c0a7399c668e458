"""The pieces every API route shares: the answer envelope, errors as codes, Bearer keys, the caller's view of us."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from airflow_provider_qwen.emulator.fetching import Origin
from airflow_provider_qwen.emulator.state import EmulatorState


class ApikleyError(Exception):
    """An answer with an error code in the envelope (HTTP 200: the body's code is the one that counts)."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def endpoint(request: Request) -> str:
    """Return the endpoint name the fault middleware gave this request."""
    return request.scope.get("emulator_endpoint", "other")


def envelope(
    state: EmulatorState,
    request: Request,
    data: Any = None,
    code: int = 200,
    msg: str = "success",
    status_code: int = 200,
    **extra: Any,
) -> JSONResponse:
    """``{"code", "msg", "data"}`` (plus ``extra`` fields), counted in the statistics."""
    state.count(endpoint(request), code)
    return JSONResponse({**extra, "code": code, "msg": msg, "data": data}, status_code=status_code)


def authorize(state: EmulatorState, request: Request) -> str:
    """
    Return the caller's API key, if it is one the emulator accepts.

    :raises ApikleyError: 401 for a missing or unknown key.
    """
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or key not in state.settings.api_keys:
        raise ApikleyError(401, "You do not have access permissions: the API key is missing or invalid")
    return key


async def json_object(request: Request) -> dict[str, Any]:
    """
    Return the request body as a JSON object.

    :raises ApikleyError: 400 when it is not one.
    """
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise ApikleyError(400, "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApikleyError(400, "The request body must be a JSON object")
    return body


def base_url(request: Request) -> str:
    """Return the emulator's base URL as this caller reaches it; the URLs it hands out start with it."""
    return str(request.base_url).rstrip("/")


def origin(request: Request) -> Origin:
    """Return this emulator, as the caller named it and as it listens."""
    server = request.scope.get("server") or ("", request.url.port or 80)
    return Origin(request.url.hostname or "", int(server[1]))
