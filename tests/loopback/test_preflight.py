"""
Image URLs asked before paying: a dead one refuses the task (or the whole batch) before any
createTask, on every operator that submits edits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import pytest

from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_provider_qwen.exceptions import ApikleyInputError
from airflow_provider_qwen.hooks import preflight
from airflow_provider_qwen.operators.batch import QwenImageToImageBatchOperator
from tests.conftest import OPERATOR_KINDS, edit_operator


class ImageHost(BaseHTTPRequestHandler):
    """A host of source images: ``/ok.png``, ``/gone.png`` (404), ``/broken.png`` (500),
    ``/no-head.png`` (405 to HEAD, 206 to a ranged GET), ``/slow.png`` (never answers in time),
    ``/moved.png`` (302 to ``/gone.png``)."""

    seen: list[tuple[str, str, str | None]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, body: bool) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Range")))
        path = self.path.split("?")[0]
        if path == "/slow.png":
            time.sleep(6)
        status = {"/ok.png": 200, "/gone.png": 404, "/broken.png": 500, "/moved.png": 302}.get(path, 404)
        if path == "/no-head.png":
            status = 405 if self.command == "HEAD" else 206 if self.headers.get("Range") == "bytes=0-0" else 200
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/gone.png")
        self.send_header("Content-Length", "1" if body else "0")
        self.end_headers()
        if body and self.command == "GET":
            self.wfile.write(b"\x89")

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)


@pytest.fixture
def image_host(apikley) -> Iterator[str]:
    """The image host's base URL, on loopback beside the emulator (the address the API is on, so allowed)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), ImageHost)
    ImageHost.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def short_preflight(monkeypatch):
    monkeypatch.setattr(preflight, "PREFLIGHT_SECONDS", 3.0)  # an answer or none, however loaded the machine


def nothing_paid(apikley, before: float) -> None:
    assert apikley.seen("createTask") == []
    assert apikley.state.credits == before


@pytest.mark.parametrize("kind", OPERATOR_KINDS)
@pytest.mark.parametrize(
    ("path", "answer"),
    [
        ("gone.png", "answered HTTP 404"),
        ("broken.png", "answered HTTP 500"),
        ("moved.png", "answered HTTP 404"),  # the redirect is followed, and checked
        ("slow.png", "no answer within 3 s"),
    ],
)
def test_a_dead_image_url_is_refused_naming_it_before_anything_is_paid(apikley, image_host, kind, path, answer):
    before = apikley.state.credits
    url = image_host.replace("http://", "http://user:s3cret@") + f"/{path}"
    operator = edit_operator(kind, task_id="edit", prompt="sepia", image_url=url, deferrable=True)
    with pytest.raises(ApikleyInputError) as excinfo:
        operator.execute({"ti": mock.Mock()})
    field = "image_url" if kind == "qwen" else "input.image_url"
    assert f"{field}='{image_host.replace('http://', 'http://***@')}/{path}': {answer}" in str(excinfo.value)
    assert "s3cret" not in str(excinfo.value)
    assert "check_image_urls=False" in str(excinfo.value)
    nothing_paid(apikley, before)


@pytest.mark.parametrize("kind", OPERATOR_KINDS)
def test_a_live_image_url_is_asked_with_head_and_the_edit_goes_on(apikley, image_host, kind):
    operator = edit_operator(kind, task_id="edit", prompt="sepia", image_url=f"{image_host}/ok.png", deferrable=True)
    with pytest.raises(TaskDeferred):
        operator.execute({"ti": mock.Mock()})
    assert ImageHost.seen == [("HEAD", "/ok.png", None)]
    assert len(apikley.seen("createTask")) == 1


def test_a_host_that_refuses_head_is_asked_for_one_byte(apikley, image_host):
    operator = edit_operator(
        "qwen", task_id="edit", prompt="sepia", image_url=f"{image_host}/no-head.png", deferrable=True
    )
    with pytest.raises(TaskDeferred):
        operator.execute({"ti": mock.Mock()})
    assert ImageHost.seen == [("HEAD", "/no-head.png", None), ("GET", "/no-head.png", "bytes=0-0")]


def test_the_check_can_be_turned_off_for_hosts_the_workers_cannot_reach(apikley, image_host):
    operator = edit_operator(
        "qwen",
        task_id="edit",
        prompt="sepia",
        image_url=f"{image_host}/gone.png",
        check_image_urls=False,
        deferrable=True,
    )
    with pytest.raises(TaskDeferred):
        operator.execute({"ti": mock.Mock()})
    assert ImageHost.seen == []
    assert len(apikley.seen("createTask")) == 1


def test_an_image_apikley_stores_is_not_asked(apikley, source_image_url):
    operator = edit_operator("qwen", task_id="edit", prompt="sepia", image_url=source_image_url, deferrable=True)
    with pytest.raises(TaskDeferred):
        operator.execute({"ti": mock.Mock()})
    assert [request.endpoint for request in apikley.seen()] == ["createTask"]


def test_a_batch_with_dead_image_urls_is_refused_whole_naming_each_dead_item(apikley, image_host, source_image_url):
    before = apikley.state.credits
    urls = [f"{image_host}/ok.png", f"{image_host}/gone.png", source_image_url] + [
        f"{image_host}/gone.png?{n}" for n in range(12)
    ]
    operator = QwenImageToImageBatchOperator(
        task_id="batch", inputs=[{"prompt": "sepia", "image_url": url} for url in urls]
    )
    with pytest.raises(ApikleyInputError) as excinfo:
        operator.execute({"ti": mock.Mock(try_number=1), "task_state_store": None})
    message = str(excinfo.value)
    assert message.startswith("13 image URLs did not answer as an image to fetch: ")
    assert f"inputs[1].image_url='{image_host}/gone.png': answered HTTP 404" in message
    assert "inputs[0]" not in message and "inputs[2]" not in message
    assert "inputs[11]" in message and "inputs[12]" not in message and "; and 3 more." in message
    nothing_paid(apikley, before)
    assert sorted(path for _, path, _ in ImageHost.seen).count("/ok.png") == 1
