"""
A scripted stand-in for Apikley on loopback, for running whole DAGs with ``dag.test()``.

Each task created answers ``queuing``, then ``generating``, then ``success`` (or ``fail`` when its
prompt asks for it) on successive status queries. It is deliberately simple; the emulator in
:mod:`airflow_provider_qwen.emulator` is the faithful peer.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PROGRESSION = ("queuing", "generating")


class FakeApikley:
    """Start with ``with FakeApikley(api_key) as fake:``; ``fake.base_url`` is where it listens."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.tasks: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.seen_headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeApikley:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, method: str, url: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        path = urlsplit(url).path
        with self._lock:
            self.calls[f"{method} {path}"] += 1
            self.seen_headers.append(headers)
            if headers.get("Authorization") != f"Bearer {self.api_key}":
                return {"code": 401, "msg": "invalid api key", "data": None}
            if method == "POST" and path == "/api/v1/jobs/createTask":
                request = json.loads(body)
                task_id = uuid.uuid4().hex
                self.tasks[task_id] = {"request": request, "polls": 0}
                return {"code": 200, "msg": "success", "data": {"taskId": task_id}}
            if method == "GET" and path == "/api/v1/jobs/recordInfo":
                task_id = parse_qs(urlsplit(url).query).get("taskId", [""])[0]
                if task_id not in self.tasks:
                    return {"code": 422, "msg": "recordInfo is null", "data": None}
                return {"code": 200, "msg": "success", "data": self._record(task_id)}
            return {"code": 404, "msg": "not found", "data": None}

    def _record(self, task_id: str) -> dict[str, Any]:
        task = self.tasks[task_id]
        polls = task["polls"]
        task["polls"] += 1
        failing = "fail" in task["request"]["input"]["prompt"]
        state = PROGRESSION[polls] if polls < len(PROGRESSION) else ("fail" if failing else "success")
        urls = [f"{self.base_url}/results/{task_id}.png"] if state == "success" else []
        return {
            "taskId": task_id,
            "model": task["request"]["model"],
            "state": state,
            "param": json.dumps(task["request"]),
            "resultJson": json.dumps({"resultUrls": urls}) if urls else "",
            "failCode": "501" if state == "fail" else "",
            "failMsg": "generation failed" if state == "fail" else "",
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _respond(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = fake._answer(self.command, self.path, dict(self.headers), self.rfile.read(length))
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _respond

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
