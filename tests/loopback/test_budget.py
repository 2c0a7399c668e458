"""Spend budgets against the emulator: an edit over budget is refused before createTask, and nothing is charged."""

from __future__ import annotations

import asyncio
import socket
import threading
from unittest import mock

import pytest

from airflow.providers.common.compat.sdk import Asset, TaskDeferred

from airflow_provider_qwen.exceptions import (
    ApikleyBudgetExceededError,
    ApikleyBudgetUnavailableError,
    ApikleyInputError,
)
from airflow_provider_qwen.operators.batch import QwenImageToImageBatchOperator
from airflow_provider_qwen.run_budget import LEDGER_ATTEMPTS, MAX_LEDGER_ANSWER_BYTES
from tests.conftest import OPERATOR_KINDS, edit_operator
from tests.loopback.test_batch import FakeStateStore, outlet_events


@pytest.fixture(params=OPERATOR_KINDS)
def edit(request, source_image_url):
    def make(**arguments):
        return edit_operator(request.param, task_id="edit", prompt="sepia", image_url=source_image_url, **arguments)

    return make


def context(map_index: int = -1) -> dict:
    ti = mock.Mock(dag_id="budgeted", run_id="manual__1", task_id="edit", map_index=map_index, try_number=1)
    return {"ti": ti}


def test_an_edit_over_the_tasks_budget_fails_before_createtask_and_the_balance_does_not_move(apikley, edit):
    before = apikley.state.credits
    with pytest.raises(ApikleyBudgetExceededError) as excinfo:
        edit(max_credits=0.5).execute(context())
    assert str(excinfo.value).startswith(
        "Over budget: this task's max_credits is 0.5 credits, 0 spent and 0 in flight, so an edit expected to cost "
        "1 would go past it; nothing was submitted, and nothing was paid for it"
    )
    assert apikley.seen("createTask") == []
    assert apikley.state.credits == before


def test_an_edit_within_the_tasks_budget_is_submitted(apikley, edit):
    result = edit(max_credits=1).execute(context())
    assert result["state"] == "success"
    assert len(apikley.seen("createTask")) == 1


def closed_port() -> int:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return closed.getsockname()[1]  # nothing listens there once the socket is closed


def test_a_run_budget_whose_ledger_cannot_be_reached_refuses_the_edit_before_paying(apikley, edit, monkeypatch):
    port = closed_port()
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    before = apikley.state.credits
    with pytest.raises(ApikleyBudgetUnavailableError) as excinfo:
        edit(run_max_credits=10).execute(context())
    message = str(excinfo.value)
    assert f"http://127.0.0.1:{port}/apikley/budgets/reserve cannot be used, so nothing was submitted" in message
    assert "run_max_credits of run manual__1 of DAG budgeted" in message
    assert apikley.seen("createTask") == []
    assert apikley.state.credits == before


def test_a_run_budget_without_an_api_server_url_refuses_the_edit(apikley, edit, monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "")
    with pytest.raises(ApikleyBudgetUnavailableError, match=r"\[api\] base_url is not set: nothing was submitted"):
        edit(run_max_credits=10).execute(context())
    assert apikley.seen("createTask") == []


def test_a_batch_stops_submitting_at_its_budget_and_reports_the_items_left(apikley, source_image_url):
    before = apikley.state.credits
    inputs = [{"prompt": f"variation {n}", "image_url": source_image_url, "seed": n} for n in range(5)]
    batch = QwenImageToImageBatchOperator(
        task_id="batch", inputs=inputs, max_credits=3, creates_per_window=2, poll_interval=0.01, expected_duration=0.0
    )
    with pytest.raises(TaskDeferred) as excinfo:
        batch.execute(context())
    trigger = excinfo.value.trigger
    assert len(trigger.tasks) == 3 and trigger.unsubmitted == [3, 4]
    assert len(apikley.seen("createTask")) == 3
    kwargs = trigger.serialize()[1]
    (event,) = asyncio.run(_events(type(trigger)(**kwargs)))
    with pytest.raises(ApikleyBudgetExceededError) as failed:
        batch.execute_complete(context(), event)
    message = str(failed.value)
    assert message.startswith("2 of 5 items were left unsubmitted, nothing paid for them (inputs[3], inputs[4])")
    assert "this task's max_credits is 3 credits" in message and "3 of 5 items were submitted" in message
    assert apikley.state.credits == before - 3  # only what was submitted was charged


def test_a_batch_whose_first_item_is_over_budget_submits_nothing(apikley, source_image_url):
    inputs = [{"prompt": "a", "image_url": source_image_url}, {"prompt": "b", "image_url": source_image_url}]
    batch = QwenImageToImageBatchOperator(task_id="batch", inputs=inputs, max_credits=0.5)
    with pytest.raises(ApikleyBudgetExceededError, match=r"0 of 2 items were submitted"):
        batch.execute(context())
    assert apikley.seen("createTask") == []


@pytest.mark.parametrize("kind", OPERATOR_KINDS)
def test_a_dead_image_url_is_refused_before_the_run_budget_is_asked(apikley, kind, monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{closed_port()}")  # a ledger asked would fail
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    image_url = f"http://127.0.0.1:{closed_port()}/gone.png"
    operator = edit_operator(kind, task_id="edit", prompt="sepia", image_url=image_url, run_max_credits=10)
    with pytest.raises(ApikleyInputError, match=r"image_url='http://127\.0\.0\.1:\d+/gone\.png': could not be"):
        operator.execute(context())
    assert apikley.seen("createTask") == []


async def test_a_batch_left_short_by_its_budget_names_its_items_in_input_order_on_every_try(
    apikley, source_image_url, tmp_path
):
    store, asset = FakeStateStore(), Asset("file:///edits")
    inputs = [{"prompt": f"variation {n}", "image_url": source_image_url, "seed": n} for n in range(5)]

    async def tried(try_number: int) -> tuple[QwenImageToImageBatchOperator, dict, dict]:
        batch = QwenImageToImageBatchOperator(
            task_id="batch",
            inputs=inputs,
            max_credits=3,
            creates_per_window=2,
            poll_interval=0.01,
            expected_duration=0.0,
            output_path=f"file://{tmp_path}",
            result_name="{source_stem}",
            outlets=[asset],
        )
        ti = mock.Mock(dag_id="budgeted", run_id="manual__1", task_id="batch", map_index=-1, try_number=try_number)
        events = outlet_events()
        run_context = {"ti": ti, "task_state_store": store, "outlet_events": events}
        with pytest.raises(TaskDeferred) as excinfo:
            batch.execute(run_context)
        (event,) = await _events(excinfo.value.trigger)
        return batch, run_context, event

    batch, run_context, event = await tried(1)
    with pytest.raises(ApikleyBudgetExceededError, match=r"^2 of 5 items were left unsubmitted"):
        batch.execute_complete(run_context, event)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shoe-2.png", "shoe-3.png", "shoe.png"]

    batch, run_context, event = await tried(2)  # the retry submits the two left, and names them after the others
    results = batch.execute_complete(run_context, event)
    names = [result["stored"][0]["uri"].rsplit("/", 1)[-1] for result in results]
    assert names == ["shoe.png", "shoe-2.png", "shoe-3.png", "shoe-4.png", "shoe-5.png"]
    assert run_context["outlet_events"][asset].extra == {"result_uris": [f"file://{tmp_path}/{name}" for name in names]}
    assert len(apikley.seen("createTask")) == 5


async def _events(trigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]


@pytest.fixture
def ledger():
    """A stand-in for the api-server's ledger on loopback: answers ``ledger.answer`` and counts requests."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Ledger(BaseHTTPRequestHandler):
        def do_POST(self):
            self.server.requests += 1
            self.rfile.read(int(self.headers["Content-Length"]))
            status, body = self.server.answer
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ledger)
    server.requests, server.answer = 0, (200, b"{}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("answer", "requests", "problem"),
    [
        ((503, b"busy"), LEDGER_ATTEMPTS, "its database cannot be used right now (503)"),
        ((200, b"[1, 2]"), 1, "its answer is not a JSON object"),
        (
            (200, b"{" + b" " * MAX_LEDGER_ANSWER_BYTES + b"}"),
            1,
            f"its answer is larger than {MAX_LEDGER_ANSWER_BYTES}",
        ),
        ((500, b"\x1b[31mboom"), 1, "it answered 500: \\x1b[31mboom"),
    ],
    ids=["busy", "not an object", "too large", "an error"],
)
def test_a_ledger_that_answers_no_budget_refuses_the_edit_before_paying(
    apikley, edit, monkeypatch, ledger, answer, requests, problem
):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{ledger.server_address[1]}")
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    ledger.answer = answer
    with pytest.raises(ApikleyBudgetUnavailableError) as excinfo:
        edit(run_max_credits=10).execute(context())
    assert f"cannot be used, so nothing was submitted: {problem}" in str(excinfo.value)
    assert ledger.requests == requests  # asked again only while it could not answer
    assert apikley.seen("createTask") == []
