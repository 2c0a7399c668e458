"""A real HTTP server on loopback that answers from a script, for the async client's tests."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class Answer:
    payload: Any = None
    status: int = 200
    body: str | None = None
    drop: bool = False
    delay: float = 0.0
    repeat: bool = False


@dataclass
class ScriptedApikley:
    """Answers each request with the next scripted :class:`Answer`; records what it was sent."""

    answers: list[Answer] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    base_url: str = ""

    def add(self, payload: Any = None, **kwargs: Any) -> None:
        self.answers.append(Answer(payload, **kwargs))

    def count(self, method: str = "GET") -> int:
        return sum(1 for sent_method, _, _ in self.requests if sent_method == method)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs, dict(request.headers)))
        if not self.answers:
            return web.json_response({"code": 500, "msg": "script exhausted"})
        answer = self.answers[0] if self.answers[0].repeat else self.answers.pop(0)
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if answer.drop:
            request.transport.close()
            raise ConnectionResetError("dropped on purpose")
        if answer.body is not None:
            return web.Response(status=answer.status, text=answer.body, content_type="text/html")
        return web.Response(status=answer.status, text=json.dumps(answer.payload), content_type="application/json")

    async def start(self) -> TestServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        self.base_url = str(server.make_url("")).rstrip("/")
        return server
