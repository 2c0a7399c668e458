"""
Injected faults and the maintenance window, as ASGI middleware in front of the API.

A faulted request never reaches its route, so a faulted createTask creates nothing. The middleware
also names each request's endpoint (``scope["emulator_endpoint"]``) for the statistics.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from airflow_provider_qwen.emulator.script import JOURNALLED_BODY_BYTES, Script, ScriptedAnswer, SeenRequest
from airflow_provider_qwen.emulator.settings import FAULT_KINDS, Faults
from airflow_provider_qwen.emulator.state import EmulatorState

Scope = dict[str, Any]
Send = Any
Receive = Any

#: Endpoints that serve files rather than answer API calls: no maintenance window for them.
FILE_ENDPOINTS = ("results", "files")

HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


def endpoint_of(path: str, upload_base_path: str) -> str | None:
    """Return the endpoint name of a request path, as used in settings and statistics; ``None`` if not an endpoint."""
    if path.startswith(f"{upload_base_path}/api/file-"):
        return "upload"
    for prefix, name in (
        ("/api/v1/jobs/createTask", "createTask"),
        ("/api/v1/jobs/recordInfo", "recordInfo"),
        ("/api/v1/chat/credit", "credit"),
        ("/api/v1/common/download-url", "download-url"),
        ("/results/", "results"),
        ("/files/", "files"),
    ):
        if path == prefix or path.startswith(prefix):
            return name
    return None


def draw_fault(faults: Faults, rng: random.Random) -> str | None:
    """One request's fault, or ``None``: each kind is drawn with its configured rate."""
    roll = rng.random()
    for kind in FAULT_KINDS:
        rate = getattr(faults, kind)
        if roll < rate:
            return kind
        roll -= rate
    return None


class FaultInjector:
    """
    Wraps the emulator's app; reads the settings afresh on every request, so changes apply at once.

    :ivar state: the emulator's memory (see :class:`~.state.EmulatorState`).
    """

    def __init__(self, app: Any, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request, with the faults its endpoint is set to have."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = self.state
        endpoint = endpoint_of(scope.get("path", ""), state.settings.upload_base_path)
        if endpoint is None:
            return await self.app(scope, receive, send)
        scope["emulator_endpoint"] = endpoint
        send = self._counting(endpoint, send)
        receive = await _journal(state.script, endpoint, scope, receive)
        scripted = state.script.next_answer(endpoint)
        if scripted is not None:
            state.count(endpoint, "scripted")
            return await _answer_script(scripted, send)
        if endpoint not in FILE_ENDPOINTS and state.in_maintenance(time.time()):
            state.count(endpoint, 455)
            return await _envelope(send, 455, "The service is under maintenance, please try again later")
        faults = state.settings.faults.get(endpoint)
        if faults is None or (fault := draw_fault(faults, state.rng)) is None:
            return await self.app(scope, receive, send)
        if fault == "slow":
            state.slowed[endpoint] += 1
            await asyncio.sleep(faults.slow_seconds)
            return await self.app(scope, receive, send)
        state.count(endpoint, f"fault:{fault}")
        return await _answer_fault(fault, faults, send)

    def _counting(self, endpoint: str, send: Send) -> Send:
        statuses = self.state.http_statuses

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses[f"{endpoint} {message['status']}"] += 1
            await send(message)

        counting_send.inner = send  # type: ignore[attr-defined]  # the server's own send, to drop the socket
        return counting_send


async def _envelope(send: Send, code: int, msg: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"code": code, "msg": msg, "data": None}).encode()
    await _respond(send, 200, "application/json", body, headers)


async def _respond(send: Send, status: int, content_type: str, body: bytes, headers: list | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _journal(script: Script, endpoint: str, scope: Scope, receive: Receive) -> Receive:
    """Note the request in ``script``'s journal; the returned ``receive`` hands the app its body again."""
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", [])}
    length = headers.get("content-length", "")
    body = b""
    if length.isdigit() and 0 < int(length) <= JOURNALLED_BODY_BYTES:
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False) and message["type"] == "http.request"
        receive = _replay(body, receive)
    query = scope.get("query_string", b"").decode("latin-1")
    script.journal.append(SeenRequest(endpoint, scope.get("method", ""), scope.get("path", ""), query, headers, body))
    return receive


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await receive()  # what follows the body: a disconnect
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _answer_script(answer: ScriptedAnswer, send: Send) -> None:
    if answer.delay:
        await asyncio.sleep(answer.delay)
    if answer.drop:
        return await _drop(send)
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.items()]
    await _respond(send, answer.status, answer.content_type, answer.body, headers)


async def _drop(send: Send) -> None:
    # uvicorn's send is a method of its request cycle, which holds the connection's transport:
    # aborting it closes the socket with nothing sent, as a proxy that gave up would.
    cycle: Any = getattr(getattr(send, "inner", send), "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise ConnectionAbortedError("injected fault: connection dropped")  # another server: it drops or 500s
    transport.abort()
    cycle.disconnected = True  # so uvicorn does not report a missing response


async def _answer_fault(fault: str, faults: Faults, send: Send) -> None:
    if fault == "rate_limited":
        retry_after = f"{faults.retry_after:g}".encode()
        await _envelope(send, 429, "Too many requests, the request was dropped", [(b"retry-after", retry_after)])
    elif fault == "maintenance":
        await _envelope(send, 455, "The service is under maintenance, please try again later")
    elif fault == "server_error":
        await _envelope(send, 500, "Server error, please try again later")
    elif fault == "malformed":
        await _respond(send, 200, "application/json", b'{"code": 200, "msg": "success", "data": {"taskId": ')
    elif fault == "html":
        await _respond(send, 502, "text/html; charset=utf-8", HTML_PAGE)
    elif fault == "drop":
        await _drop(send)
