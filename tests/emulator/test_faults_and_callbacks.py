"""Injected faults, and callbacks delivered (and signed) as Apikley documents them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.emulator.conftest import AUTH


def credit(client) -> requests.Response:
    return client.http.get(f"{client.url}/api/v1/chat/credit", headers=AUTH, timeout=5)


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        ("rate_limited", lambda r: r.json()["code"] == 429 and float(r.headers["Retry-After"]) == 1.0),
        ("maintenance", lambda r: r.json()["code"] == 455),
        ("server_error", lambda r: r.json()["code"] == 500),
        ("html", lambda r: r.status_code == 502 and "<html>" in r.text),
    ],
)
def test_each_fault_kind_answers_as_configured(client, fault, check):
    client.configure(faults={"credit": {fault: 1.0}})
    assert check(credit(client))


def test_malformed_body_is_not_json(client):
    client.configure(faults={"credit": {"malformed": 1.0}})
    with pytest.raises(ValueError):
        credit(client).json()


def test_dropped_connection(client):
    client.configure(faults={"credit": {"drop": 1.0}})
    with pytest.raises(requests.ConnectionError):
        credit(client)


def test_slow_answer(client):
    client.configure(faults={"credit": {"slow": 1.0, "slow_seconds": 0.3}})
    started = time.monotonic()
    assert credit(client).json()["code"] == 200
    assert time.monotonic() - started >= 0.3


def test_faulted_creates_create_nothing_and_faults_hit_only_their_share(client):
    url = client.image_url()
    client.configure(faults={"createTask": {"server_error": 0.5}}, random_seed=7)
    codes = [client.create(image_url=url).json()["code"] for _ in range(40)]
    assert 5 < codes.count(500) < 35
    assert client.stats()["accepted_create_tasks"] == codes.count(200)


class Receiver:
    def __init__(self) -> None:
        self.calls: list[tuple[dict, dict]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.calls.append((dict(self.headers), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callback"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.02)


def test_signed_callback_is_delivered_with_the_task_details(client):
    client.configure(callback_key="hmac-secret", callback_twice=True)
    receiver = Receiver()
    try:
        body = {
            "model": "qwen/image-to-image",
            "callBackUrl": receiver.url,
            "input": {"prompt": "sepia", "image_url": client.image_url()},
        }
        task_id = client.http.post(f"{client.url}/api/v1/jobs/createTask", headers=AUTH, json=body).json()["data"][
            "taskId"
        ]
        receiver.wait_for(2)
    finally:
        receiver.server.shutdown()
    assert len(receiver.calls) == 2  # delivered twice, as Apikley may
    headers, payload = receiver.calls[0]
    assert payload["code"] == 200
    assert payload["data"]["taskId"] == task_id
    assert payload["data"]["state"] == "success"
    timestamp = headers["X-Webhook-Timestamp"]
    expected = base64.b64encode(
        hmac.new(b"hmac-secret", f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    ).decode()
    assert hmac.compare_digest(headers["X-Webhook-Signature"], expected)
