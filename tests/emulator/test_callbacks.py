"""Callbacks: the task-details shape POSTed to callBackUrl when a task ends, signed when a key is set."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.emulator.conftest import MODEL


class Receiver:
    """A tiny loopback webhook receiver that records what it is sent and answers the statuses it is told."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.calls: list[tuple[dict[str, str], dict]] = []
        self.statuses = list(statuses or [])
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.calls.append((dict(self.headers), body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callback"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.02)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.server.shutdown()
    running.server.server_close()


def create_with_callback(client, url: str) -> str:
    body = {"model": MODEL, "callBackUrl": url, "input": {"prompt": "sepia", "image_url": client.image_url()}}
    answer = client.create_body(body).json()
    assert answer["code"] == 200, answer
    return answer["data"]["taskId"]


def expected_signature(key: bytes, task_id: str, timestamp: str) -> str:
    return base64.b64encode(hmac.new(key, f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()).decode()


def test_signed_callback_is_delivered_once_with_the_task_details(client, receiver):
    client.configure(callback_key="hmac-secret")
    task_id = create_with_callback(client, receiver.url)
    receiver.wait_for(1)
    time.sleep(0.2)  # a second delivery would have come by now
    assert len(receiver.calls) == 1
    headers, payload = receiver.calls[0]
    assert (payload["code"], payload["msg"]) == (200, "success")
    assert payload["data"] == client.record(task_id)["data"]  # the same object recordInfo answers
    assert payload["data"]["state"] == "success"
    assert json.loads(payload["data"]["param"])["callBackUrl"] == receiver.url
    timestamp = headers["X-Webhook-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 5
    assert hmac.compare_digest(headers["X-Webhook-Signature"], expected_signature(b"hmac-secret", task_id, timestamp))
    assert not hmac.compare_digest(headers["X-Webhook-Signature"], expected_signature(b"other", task_id, timestamp))


def test_callbacks_can_be_delivered_twice_and_each_delivery_is_counted(client, receiver):
    client.configure(callback_twice=True)
    task_ids = [create_with_callback(client, receiver.url) for _ in range(3)]
    receiver.wait_for(6)
    assert sorted(body["data"]["taskId"] for _, body in receiver.calls) == sorted(task_ids * 2)
    deadline = time.monotonic() + 5
    while client.stats()["api_codes"].get("callback taken", 0) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    assert client.stats()["api_codes"]["callback taken"] == 6


def test_a_failed_task_calls_back_with_code_501_unsigned(client, receiver):
    client.configure(fail_fraction=1.0)
    task_id = create_with_callback(client, receiver.url)
    receiver.wait_for(1)
    headers, payload = receiver.calls[0]
    assert payload["code"] == 501
    assert (payload["data"]["taskId"], payload["data"]["state"], payload["data"]["failCode"]) == (
        task_id,
        "fail",
        "501",
    )
    assert payload["msg"] == payload["data"]["failMsg"]
    assert "X-Webhook-Signature" not in headers


def test_a_refused_callback_is_retried(client):
    receiver = Receiver(statuses=[500, 503])
    try:
        client.configure(callback_backoff=0.05, callback_attempts=3)
        create_with_callback(client, receiver.url)
        receiver.wait_for(3)
        time.sleep(0.2)
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
    assert len(receiver.calls) == 3  # two refusals, then taken: no more tries


def test_a_callback_nobody_takes_is_given_up(client):
    receiver = Receiver(statuses=[500] * 10)
    try:
        client.configure(callback_backoff=0.01, callback_attempts=2)
        task_id = create_with_callback(client, receiver.url)
        receiver.wait_for(2)
        time.sleep(0.2)
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
    assert len(receiver.calls) == 2
    assert client.record(task_id)["data"]["state"] == "success"  # polling still tells


def test_a_fraction_of_callbacks_can_be_dropped_at_random_and_is_counted(client, receiver):
    client.configure(callback_drop=0.5, random_seed=7)
    task_ids = [create_with_callback(client, receiver.url) for _ in range(20)]
    deadline = time.monotonic() + 10
    while sum(client.stats()["api_codes"].get(kind, 0) for kind in ("callback taken", "callback dropped")) < 20:
        assert time.monotonic() < deadline, client.stats()
        time.sleep(0.02)
    dropped = client.stats()["api_codes"]["callback dropped"]
    assert 3 <= dropped <= 17  # at random, not all or none
    assert len(receiver.calls) == 20 - dropped
    assert {body["data"]["taskId"] for _, body in receiver.calls} < set(task_ids)
