"""Spend budgets against the emulator: an edit over budget is refused before createTask, and nothing is charged."""

from __future__ import annotations

import asyncio
import socket
from unittest import mock

import pytest

from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_provider_qwen.exceptions import ApikleyBudgetExceededError, ApikleyBudgetUnavailableError
from airflow_provider_qwen.operators.batch import QwenImageToImageBatchOperator
from tests.conftest import OPERATOR_KINDS, edit_operator


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


def test_a_run_budget_whose_ledger_cannot_be_reached_refuses_the_edit_before_paying(apikley, edit, monkeypatch):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once the socket is closed
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setattr("airflow_provider_qwen.run_budget.time.sleep", lambda seconds: None)
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


async def _events(trigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]
