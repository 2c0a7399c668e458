from __future__ import annotations

import time
from unittest import mock

import pytest

from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_provider_qwen.exceptions import (
    ApikleyError,
    ApikleyInputError,
    ApikleyTaskFailedError,
    ApikleyTaskTimeoutError,
)
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from airflow_provider_qwen.triggers.apikley import ApikleyTaskTrigger
from tests.conftest import BASE_URL
from tests.unit.fixtures import IMAGE_URL, RESULT_URL, TASK_ID, created, record

CREATE_URL = f"{BASE_URL}/api/v1/jobs/createTask"
RECORD_URL = f"{BASE_URL}/api/v1/jobs/recordInfo"
SENT_INPUT = {"prompt": "sepia", "image_url": IMAGE_URL, "strength": 0.6, "seed": 7}


def make_operator(**overrides) -> QwenImageToImageOperator:
    arguments = {"task_id": "edit", "prompt": "sepia", "image_url": IMAGE_URL, "strength": 0.6, "seed": 7}
    return QwenImageToImageOperator(**{**arguments, **overrides})


@pytest.fixture
def context():
    return {"ti": mock.Mock()}


def pushed(context) -> dict:
    return {call.kwargs["key"]: call.kwargs["value"] for call in context["ti"].xcom_push.call_args_list}


def test_defers_to_the_trigger_after_pushing_the_task_id(requests_mock, context):
    requests_mock.post(CREATE_URL, json=created())
    requests_mock.get(RECORD_URL, json=record("queuing"))
    operator = make_operator(deferrable=True, timeout=600, poll_interval=4)
    before = time.time()
    with pytest.raises(TaskDeferred) as excinfo:
        operator.execute(context)
    assert pushed(context) == {"apikley_task_id": TASK_ID}
    trigger = excinfo.value.trigger
    assert isinstance(trigger, ApikleyTaskTrigger)
    assert trigger.apikley_task_id == TASK_ID
    assert before + 600 <= trigger.deadline <= time.time() + 600
    assert trigger.poll_interval == 4
    assert excinfo.value.method_name == "execute_complete"
    assert requests_mock.request_history[0].json()["input"] == SENT_INPUT


def test_does_not_defer_when_the_task_already_ended(requests_mock, context):
    requests_mock.post(CREATE_URL, json=created())
    requests_mock.get(RECORD_URL, json=record("success"))
    result = make_operator(deferrable=True).execute(context)
    assert result == {"apikley_task_id": TASK_ID, "state": "success", "result_urls": [RESULT_URL], "input": SENT_INPUT}


def test_waits_in_the_worker_when_not_deferrable(requests_mock, context):
    requests_mock.post(CREATE_URL, json=created())
    requests_mock.get(RECORD_URL, [{"json": record(state)} for state in ("waiting", "generating", "success")])
    result = make_operator(deferrable=False, poll_interval=0.01).execute(context)
    assert result["result_urls"] == [RESULT_URL]
    assert requests_mock.call_count == 4


def test_blocking_wait_times_out_naming_the_task(requests_mock, context):
    requests_mock.post(CREATE_URL, json=created())
    requests_mock.get(RECORD_URL, json=record("generating"))
    with pytest.raises(ApikleyTaskTimeoutError, match=TASK_ID):
        make_operator(deferrable=False, poll_interval=0.01, timeout=0.1).execute(context)


def test_failed_generation_fails_with_task_id_code_and_message(requests_mock, context):
    requests_mock.post(CREATE_URL, json=created())
    requests_mock.get(RECORD_URL, json=record("fail", fail_code="501", fail_msg="image unreadable"))
    with pytest.raises(ApikleyTaskFailedError) as excinfo:
        make_operator().execute(context)
    assert str(excinfo.value) == f"Apikley task {TASK_ID} failed: failCode=501, failMsg=image unreadable"


def test_without_waiting_returns_right_after_submitting(requests_mock, context):
    requests_mock.post(CREATE_URL, json=created())
    result = make_operator(wait_for_completion=False).execute(context)
    assert result == {"apikley_task_id": TASK_ID, "state": "waiting", "result_urls": [], "input": SENT_INPUT}
    assert requests_mock.call_count == 1
    assert pushed(context) == {"apikley_task_id": TASK_ID}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("strength", 1.5),
        ("seed", "seven"),
        ("prompt", ""),
        ("image_url", "file:///etc/passwd"),
        ("guidance_scale", 2.55),
    ],
)
def test_bad_input_fails_before_any_request(requests_mock, context, field, value):
    with pytest.raises(ApikleyInputError, match=f"{field}="):
        make_operator(**{field: value}).execute(context)
    assert requests_mock.call_count == 0
    context["ti"].xcom_push.assert_not_called()


def test_execute_complete_success_returns_the_summary_with_the_sent_input(context):
    event = {"status": "success", "apikley_task_id": TASK_ID, "result_urls": [RESULT_URL], "input": {}}
    assert make_operator().execute_complete(context, event) == {
        "apikley_task_id": TASK_ID,
        "state": "success",
        "result_urls": [RESULT_URL],
        "input": SENT_INPUT,
    }


@pytest.mark.parametrize(
    ("event", "error", "message"),
    [
        (
            {"status": "failed", "apikley_task_id": TASK_ID, "fail_code": "501", "fail_message": "x"},
            ApikleyTaskFailedError,
            "failCode=501",
        ),
        ({"status": "timeout", "apikley_task_id": TASK_ID, "message": "too slow"}, ApikleyTaskTimeoutError, "too slow"),
        ({"status": "error", "apikley_task_id": TASK_ID, "message": "401 bad key"}, ApikleyError, "401 bad key"),
        ({"status": "success", "apikley_task_id": TASK_ID}, ApikleyError, "no result URLs"),
        ({"status": "paused", "apikley_task_id": TASK_ID}, ApikleyError, "Unknown status 'paused'"),
        ({"status": "success", "result_urls": []}, ApikleyError, "without a task id"),
        (None, ApikleyError, "got None"),
    ],
)
def test_execute_complete_fails_on_every_other_event(context, event, error, message):
    with pytest.raises(error, match=message):
        make_operator().execute_complete(context, event)


def test_every_input_field_and_the_callback_are_templated():
    fields = set(QwenImageToImageOperator.template_fields)
    assert {"prompt", "image_url", "strength", "seed", "guidance_scale", "callback_url", "apikley_conn_id"} <= fields
    assert len(fields) == 13


def test_output_path_copies_each_result_and_reports_it(requests_mock, context, tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + b"\x01" * 64
    requests_mock.get(RESULT_URL, content=png)
    event = {"status": "success", "apikley_task_id": TASK_ID, "result_urls": [RESULT_URL], "input": {}}
    result = make_operator(output_path=f"file://{tmp_path}/edits").execute_complete(context, event)
    (stored,) = result["stored"]
    assert stored["uri"] == f"file://{tmp_path}/edits/{TASK_ID}-0.png"
    assert (tmp_path / "edits" / f"{TASK_ID}-0.png").read_bytes() == png
    assert (stored["size"], stored["content_type"]) == (len(png), "image/png")


def test_without_output_path_nothing_is_downloaded(requests_mock, context):
    event = {"status": "success", "apikley_task_id": TASK_ID, "result_urls": [RESULT_URL], "input": {}}
    assert "stored" not in make_operator().execute_complete(context, event)
    assert requests_mock.call_count == 0
