"""
An edit's create and the shared create pace, as a task reaches it: a slot is waited for, and a pace
that cannot be used costs one warning and nothing else: the edit creates once, at once.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from functools import partial
from unittest import mock

import pytest
from structlog.testing import capture_logs

from airflow_provider_qwen.api_server.signing import request_signature
from airflow_provider_qwen.create_pace import MAX_PACE_ANSWER_BYTES, MAX_PACE_WAIT_SECONDS, PACE_ATTEMPTS, CreatePace
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from tests.conftest import API_KEY, OPERATOR_KINDS, edit_operator

FALLBACK = "Creating without the create pace this deployment's edits share"


@pytest.fixture
def pace(monkeypatch):
    """
    A stand-in for the api-server's pace on loopback, with ``[api] base_url`` on it: it answers
    ``pace.answers`` in turn (the last one from then on) and keeps what it was sent.
    """
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Pace(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.server.received.append((self.path, dict(self.headers), body))
            status, answer = self.server.answers[min(len(self.server.received), len(self.server.answers)) - 1]
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pace)
    server.received, server.answers = [], [(200, b'{"wait_seconds": 0.0, "spacing_seconds": 0.5}')]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def slept(monkeypatch) -> list[float]:
    """What the edit's pace waited for, instead of waiting (retries between requests wait for real: they are short)."""
    from airflow_provider_qwen.operators import apikley as operator_module

    waits: list[float] = []
    monkeypatch.setattr(operator_module, "CreatePace", partial(CreatePace, sleep=waits.append))
    return waits


@pytest.fixture(params=OPERATOR_KINDS)
def edit(request, source_image_url):
    def run(**arguments) -> dict:
        operator = edit_operator(
            request.param, task_id="edit", prompt="sepia", image_url=source_image_url, wait_for_completion=False
        )
        ti = mock.Mock(dag_id="paced", run_id="manual__1", task_id="edit", map_index=3, try_number=1)
        return operator.execute({"ti": ti})

    return run


@pytest.fixture
def logged():
    """What the operators log while the test runs."""
    with capture_logs() as logs:
        yield logs


def fallback_warnings(logs: list[dict]) -> list[str]:
    return [entry["event"] for entry in logs if entry["log_level"] == "warning" and entry["event"].startswith(FALLBACK)]


def logged_lines(logs: list[dict], start: str) -> list[str]:
    return [entry["event"] for entry in logs if entry["log_level"] == "info" and entry["event"].startswith(start)]


def set_connection(monkeypatch, apikley, **extra) -> None:
    connection = json.loads(apikley.airflow_connection())
    connection["extra"].update(extra)
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", json.dumps(connection))


def closed_port() -> int:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return closed.getsockname()[1]  # nothing listens there once the socket is closed


def test_an_edit_waits_for_its_slot_asked_for_with_a_signed_request(apikley, edit, pace, slept):
    pace.answers = [(200, b'{"wait_seconds": 1.25, "spacing_seconds": 0.5}')]
    edit()
    assert slept == [1.25]
    ((path, headers, body),) = pace.received
    assert path == "/apikley/create-pace/reserve"
    fields = json.loads(body)
    assert fields["conn_id"] == "apikley_default" and len(fields["request_id"]) == 32
    signature = request_signature(API_KEY, "/create-pace/reserve", headers["X-Apikley-Timestamp"], body)
    assert headers["X-Apikley-Signature"] == signature
    assert API_KEY not in json.dumps(headers) + body.decode()
    assert len(apikley.seen("createTask")) == 1


def test_without_an_api_server_url_the_edit_creates_at_once_after_one_warning(apikley, edit, monkeypatch, logged):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "")
    edit()
    (warning,) = fallback_warnings(logged)
    assert "[api] base_url is not set" in warning and "backs off if Apikley answers 429" in warning
    assert "The extra shared_create_pace set to false on connection 'apikley_default' creates without" in warning
    assert len(apikley.seen("createTask")) == 1


def test_an_unreachable_pace_costs_one_warning_and_a_second_at_most(apikley, edit, monkeypatch, logged):
    port = closed_port()
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    edit()
    assert time.monotonic() - started < 5  # three attempts, a quarter and half a second apart
    (warning,) = fallback_warnings(logged)
    assert f"the pace at http://127.0.0.1:{port}/apikley/create-pace/reserve cannot be used" in warning
    assert "it could not be reached (ConnectionError)" in warning
    assert len(apikley.seen("createTask")) == 1


BAD_ANSWERS = [
    ((503, b"busy"), PACE_ATTEMPTS, "its database cannot be used right now (503)"),
    ((401, b""), 1, "it answered 401: the request's signature was refused"),
    ((500, b"\x1b[31mboom"), 1, "it answered 500: \\x1b[31mboom"),
    ((200, b"[1, 2]"), 1, "its answer is not a JSON object"),
    ((200, b"{" + b" " * MAX_PACE_ANSWER_BYTES + b"}"), 1, f"its answer is larger than {MAX_PACE_ANSWER_BYTES}"),
    ((200, b'{"wait_seconds": NaN, "spacing_seconds": 0.5}'), 1, "wait_seconds=nan is not from 0"),
    ((200, b'{"wait_seconds": -1, "spacing_seconds": 0.5}'), 1, "wait_seconds=-1 is not from 0"),
    ((200, b'{"wait_seconds": 1e9, "spacing_seconds": 0.5}'), 1, f"is not from 0 to {MAX_PACE_WAIT_SECONDS:g} s"),
    ((200, b'{"wait_seconds": true, "spacing_seconds": 0.5}'), 1, "wait_seconds=True is not from 0"),
    ((200, b'{"wait_seconds": 1, "spacing_seconds": 0}'), 1, "spacing_seconds=0 is not a positive number"),
]


@pytest.mark.parametrize(
    ("answer", "requests", "problem"),
    BAD_ANSWERS,
    ids=[
        "busy",
        "refused",
        "an error",
        "not an object",
        "too large",
        "NaN",
        "negative",
        "a day",
        "boolean",
        "no spacing",
    ],
)
def test_a_pace_that_answers_no_slot_costs_one_warning_and_the_edit_creates_once_at_once(
    apikley, edit, pace, slept, logged, answer, requests, problem
):
    pace.answers = [answer]
    edit()
    (warning,) = fallback_warnings(logged)
    assert problem in warning
    assert len(pace.received) == requests  # sent again only while it could not answer
    assert slept == []
    assert len(apikley.seen("createTask")) == 1


def test_a_request_sent_again_names_the_same_slot(apikley, edit, pace, slept, logged):
    pace.answers = [(503, b"busy"), (200, b'{"wait_seconds": 0.5, "spacing_seconds": 0.5}')]
    edit()
    first, again = (json.loads(body) for _, _, body in pace.received)
    assert first == again  # the pace answers a request it saw with the slot it gave
    assert slept == [0.5]
    assert fallback_warnings(logged) == []


def test_a_long_wait_is_logged_with_how_long_and_why(apikley, edit, pace, slept, logged, monkeypatch):
    set_connection(monkeypatch, apikley, creates_per_window=4, window_seconds=2)
    pace.answers = [(200, b'{"wait_seconds": 7.5, "spacing_seconds": 0.525}')]
    edit()
    assert slept == [7.5]
    (line,) = logged_lines(logged, "Waiting")
    assert line == (
        "Waiting 7.5 s for this edit's create slot: the creates through connection 'apikley_default' are spaced "
        "0.53 s apart across the deployment (creates_per_window=4 in window_seconds=2), and about 14 are ahead"
    )


def test_a_short_wait_is_not_logged(apikley, edit, pace, slept, logged):
    pace.answers = [(200, b'{"wait_seconds": 3.0, "spacing_seconds": 0.525}')]  # under three 10 s windows
    edit()
    assert slept == [3.0]
    assert logged_lines(logged, "Waiting") == []


@pytest.mark.parametrize("off", [False, "false"])
def test_with_the_shared_pace_off_nothing_is_asked_and_nothing_warned(apikley, edit, pace, logged, monkeypatch, off):
    set_connection(monkeypatch, apikley, shared_create_pace=off)
    edit()
    assert pace.received == []
    assert fallback_warnings(logged) == []
    assert len(apikley.seen("createTask")) == 1


def test_the_warning_is_given_once_however_often_one_task_asks(apikley, monkeypatch, caplog):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "")
    paced = CreatePace(ApikleyHook(), logging.getLogger("edit"))
    assert [paced.wait_for_slot(), paced.wait_for_slot()] == [0.0, 0.0]
    assert len([r.getMessage() for r in caplog.records if r.getMessage().startswith(FALLBACK)]) == 1
