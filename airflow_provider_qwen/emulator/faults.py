"""
Injected faults, as ASGI middleware: the answer a flaky gateway or an overloaded service gives.

A faulted request never reaches the route, so a faulted createTask creates nothing.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from airflow_provider_qwen.emulator.settings import EmulatorSettings, Faults


def endpoint_of(path: str) -> str | None:
    """The endpoint name of a request path, as used in settings and statistics."""
    if path.startswith("/_emulator"):
        return None
    for prefix, name in (
        ("/api/v1/jobs/createTask", "createTask"),
        ("/api/v1/jobs/recordInfo", "recordInfo"),
        ("/api/v1/chat/credit", "credit"),
        ("/api/v1/common/download-url", "download-url"),
        ("/results/", "results"),
        ("/files/", "files"),
    ):
        if path.startswith(prefix):
            return name
    return "upload" if "/api/file-" in path else None


class FaultInjector:
    """Wraps the emulator's app; reads the faults from its (changeable) settings on every request."""

    def __init__(self, app: Any, emulator: Any) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        endpoint = endpoint_of(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            return await self.app(scope, receive, send)
        settings: EmulatorSettings = self.emulator.settings
        if endpoint not in ("results", "files") and time.time() < self.emulator.maintenance_until:
            self.emulator.count(endpoint, 455)
            return await _json(send, 455, "service under maintenance")
        faults = settings.faults.get(endpoint)
        if faults is not None:
            fault = _draw(faults, self.emulator.rng)
            if fault == "slow":
                await asyncio.sleep(faults.slow_seconds)
            elif fault is not None:
                self.emulator.count(endpoint, f"fault:{fault}")
                return await _answer_fault(fault, faults, send)
        return await self.app(scope, receive, send)


def _draw(faults: Faults, rng: random.Random) -> str | None:
    roll = rng.random()
    for name in ("rate_limited", "maintenance", "server_error", "malformed", "html", "drop", "slow"):
        rate = getattr(faults, name)
        if roll < rate:
            return name
        roll -= rate
    return None


async def _json(send: Any, code: int, msg: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await _send(send, 200, "application/json", json.dumps({"code": code, "msg": msg, "data": None}).encode(), headers)


async def _send(send: Any, status: int, content_type: str, body: bytes, headers: list | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _answer_fault(fault: str, faults: Faults, send: Any) -> None:
    if fault == "rate_limited":
        await _json(send, 429, "rate limited", [(b"retry-after", str(faults.retry_after).encode())])
    elif fault == "maintenance":
        await _json(send, 455, "service under maintenance")
    elif fault == "server_error":
        await _json(send, 500, "internal error")
    elif fault == "malformed":
        await _send(send, 200, "application/json", b'{"code": 200, "msg": "success", "data": {')
    elif fault == "html":
        page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
        await _send(send, 502, "text/html", page)
    elif fault == "drop":
        # uvicorn's send is a bound method of the request cycle, which holds the socket's transport.
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if transport is not None:
            transport.abort()
        else:  # another server: the closest thing to a drop
            await _send(send, 502, "text/plain", b"")
