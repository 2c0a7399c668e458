"""
The review operator against the emulator: Airflow's Human-in-the-loop answers given as its resume events,
the question written through a stand-in for the worker's supervisor.
"""

from __future__ import annotations

from datetime import UTC, datetime
from unittest import mock

import pytest

from airflow_provider_qwen.exceptions import ApikleyInputError
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.models import QWEN_IMAGE_TO_IMAGE
from airflow_provider_qwen.operators.review import (
    REJECTED_XCOM_KEY,
    REVIEW_XCOM_KEY,
    ApikleyReviewOperator,
)
from airflow_provider_qwen.review import APPROVE, RE_EDIT, REJECT


class FakeStateStore(dict):
    """Airflow 3.3's task state store, as the operator uses it."""

    def set(self, key, value):
        self[key] = value


class FakeTaskInstance:
    """A task instance whose XComs are kept in a dict, as Airflow keeps them across a wait for an answer."""

    dag_id, run_id, task_id, map_index, id = (
        "review_dag",
        "manual__1",
        "review",
        0,
        "0190a0a0-0000-7000-8000-000000000000",
    )

    def __init__(self, try_number: int = 1) -> None:
        self.try_number = try_number
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key, value):
        self.xcom[key] = value

    def xcom_pull(self, task_ids=None, key="return_value", map_indexes=None):
        """As Airflow's: only with this task and map index given is it this task instance's value alone."""
        if (task_ids, map_indexes) != (self.task_id, self.map_index):
            return [self.xcom.get(key), {"another map index's": "value"}]
        return self.xcom.get(key)


@pytest.fixture
def asked():
    """The questions the operator wrote (Airflow's upsert of its Human-in-the-loop detail)."""
    with mock.patch("airflow.providers.standard.operators.hitl.upsert_hitl_detail") as upsert:
        yield upsert


@pytest.fixture
def edited(apikley, source_image_url) -> dict:
    """A finished edit's XCom value, as QwenImageToImageOperator returns it."""
    request = {"prompt": "sepia", "image_url": source_image_url, "strength": 0.6}
    task_id = ApikleyHook().create_task(QWEN_IMAGE_TO_IMAGE, request)
    apikley.wait_until_ended(task_id)
    return {
        "apikley_task_id": task_id,
        "state": "success",
        "result_urls": ApikleyHook().get_task(task_id).result_urls,
        "input": request,
        "credits_consumed": 1.0,
    }


def answer(option: str, **values) -> dict:
    return {
        "chosen_options": [option],
        "params_input": {"prompt": None, "strength": None, "note": "", **values},
        "responded_at": datetime.now(UTC),
        "responded_by_user": {"id": "1", "name": "alice"},
    }


def ask(operator: ApikleyReviewOperator, context: dict) -> None:
    """Run ``execute``: it must write the question and wait for its answer."""
    with pytest.raises(BaseException) as waiting:  # TaskAwaitingInput on 3.3, TaskDeferred before
        operator.execute(context)
    assert type(waiting.value).__name__ in ("TaskAwaitingInput", "TaskDeferred")


def respond(operator: ApikleyReviewOperator, context: dict, response: dict):
    """Resume with ``response``; return the task's value, or ``"asked again"``."""
    try:
        return operator.execute_complete(context, response)
    except BaseException as waiting:
        if type(waiting).__name__ not in ("TaskAwaitingInput", "TaskDeferred"):
            raise
        return "asked again"


def test_approving_returns_the_edit_unchanged_and_records_the_responder(apikley, edited, asked):
    ti = FakeTaskInstance()
    context = {"ti": ti, "task_instance": ti}
    operator = ApikleyReviewOperator(task_id="review", edit=edited)
    ask(operator, context)
    body = asked.call_args.kwargs["body"]
    assert edited["input"]["image_url"] in body and edited["result_urls"][0] in body
    assert f"/apikley/connections/apikley_default/tasks/{edited['apikley_task_id']}" in body
    assert asked.call_args.kwargs["params"]["prompt"]["value"] == "sepia"

    assert respond(ApikleyReviewOperator(task_id="review", edit=edited), context, answer(APPROVE)) == edited
    assert ti.xcom[REVIEW_XCOM_KEY]["outcome"] == "approved"
    assert ti.xcom[REVIEW_XCOM_KEY]["responded_by"] == "alice"
    assert REJECTED_XCOM_KEY not in ti.xcom
    assert len(apikley.state.tasks) == 1  # the review paid for nothing


def test_a_re_edit_is_paid_once_asked_again_and_approved_in_the_edits_shape(apikley, edited, asked):
    ti = FakeTaskInstance()
    context = {"ti": ti, "task_instance": ti}
    ask(ApikleyReviewOperator(task_id="review", edit=edited, poll_interval=0.05), context)
    resumed = ApikleyReviewOperator(task_id="review", edit=edited, poll_interval=0.05)
    assert respond(resumed, context, answer(RE_EDIT, prompt="noir", strength=0.3, note="too warm")) == "asked again"

    tasks = list(apikley.state.tasks.values())
    assert len(tasks) == 2
    assert tasks[1].request["input"] == {**edited["input"], "prompt": "noir", "strength": 0.3}
    assert ti.xcom["apikley_task_id"] == tasks[1].task_id  # the extra link follows the re-edit
    assert asked.call_count == 2

    approved = respond(ApikleyReviewOperator(task_id="review", edit=edited), context, answer(APPROVE))
    assert approved.keys() == edited.keys()
    assert approved["apikley_task_id"] == tasks[1].task_id
    assert approved["input"]["prompt"] == "noir"
    review = ti.xcom[REVIEW_XCOM_KEY]
    assert (review["outcome"], review["rounds"], review["responded_by"]) == ("approved", 2, "alice")
    assert review["history"][0]["note"] == "too warm"
    assert len(apikley.state.tasks) == 2


def test_a_re_edit_in_the_last_round_rejects_the_item_with_a_note(apikley, edited, asked):
    ti = FakeTaskInstance()
    context = {"ti": ti, "task_instance": ti}
    ask(ApikleyReviewOperator(task_id="review", edit=edited, max_review_rounds=1), context)
    operator = ApikleyReviewOperator(task_id="review", edit=edited, max_review_rounds=1)
    assert respond(operator, context, answer(RE_EDIT, prompt="noir")) is None
    assert "max_review_rounds=1" in ti.xcom[REJECTED_XCOM_KEY]["note"]
    assert len(apikley.state.tasks) == 1


def test_a_rejection_is_listed_with_the_note_and_returns_nothing(apikley, edited, asked):
    ti = FakeTaskInstance()
    context = {"ti": ti, "task_instance": ti}
    ask(ApikleyReviewOperator(task_id="review", edit=edited), context)
    assert respond(ApikleyReviewOperator(task_id="review", edit=edited), context, answer(REJECT, note="blurry")) is None
    assert ti.xcom[REJECTED_XCOM_KEY] == ti.xcom[REVIEW_XCOM_KEY]
    assert (ti.xcom[REJECTED_XCOM_KEY]["note"], ti.xcom[REJECTED_XCOM_KEY]["responded_by"]) == ("blurry", "alice")


def test_a_re_edit_breaking_the_models_rules_fails_before_any_request(apikley, edited, asked):
    ti = FakeTaskInstance()
    context = {"ti": ti, "task_instance": ti}
    ask(ApikleyReviewOperator(task_id="review", edit=edited), context)
    with pytest.raises(ApikleyInputError, match=r"strength=0\.333"):
        respond(ApikleyReviewOperator(task_id="review", edit=edited), context, answer(RE_EDIT, strength=0.333))
    assert len(apikley.state.tasks) == 1


def test_a_retry_resumes_the_same_re_edit_instead_of_paying_again(apikley, edited, asked):
    store = FakeStateStore()
    first = FakeTaskInstance()
    ask(ApikleyReviewOperator(task_id="review", edit=edited), {"ti": first, "task_instance": first})
    context = {"ti": first, "task_instance": first, "task_state_store": store}
    respond(ApikleyReviewOperator(task_id="review", edit=edited), context, answer(RE_EDIT, prompt="noir"))
    assert len(apikley.state.tasks) == 2

    retry = FakeTaskInstance(try_number=2)
    retry_context = {"ti": retry, "task_instance": retry, "task_state_store": store}
    ask(ApikleyReviewOperator(task_id="review", edit=edited), retry_context)
    respond(ApikleyReviewOperator(task_id="review", edit=edited), retry_context, answer(RE_EDIT, prompt="noir"))
    assert len(apikley.state.tasks) == 2  # the same request: resumed
    respond(ApikleyReviewOperator(task_id="review", edit=edited), retry_context, answer(REJECT))
    retry.xcom["review_state"]["round"] = 1
    respond(ApikleyReviewOperator(task_id="review", edit=edited), retry_context, answer(RE_EDIT, prompt="sepia noir"))
    assert len(apikley.state.tasks) == 3  # another request: paid again


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_max_review_rounds_must_be_a_whole_number_of_one_or_more(value):
    with pytest.raises(ApikleyInputError, match=rf"max_review_rounds={value!r}"):
        ApikleyReviewOperator(task_id="review", edit={}, max_review_rounds=value)


def test_no_answer_in_time_rejects_the_item_with_no_responder(apikley, edited, asked):
    ti = FakeTaskInstance()
    context = {"ti": ti, "task_instance": ti}
    ask(ApikleyReviewOperator(task_id="review", edit=edited), context)
    assert asked.call_args.kwargs["defaults"] == [REJECT]
    timed_out = {**answer(REJECT), "responded_by_user": None}  # what Airflow records at the timeout
    assert respond(ApikleyReviewOperator(task_id="review", edit=edited), context, timed_out) is None
    assert ti.xcom[REJECTED_XCOM_KEY]["responded_by"] is None
    assert "no response within response_timeout" in ti.xcom[REJECTED_XCOM_KEY]["note"]
