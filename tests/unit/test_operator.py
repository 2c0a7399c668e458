from __future__ import annotations

import time
from datetime import UTC
from unittest import mock

import pytest

from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_provider_qwen.exceptions import (
    ApikleyAuthError,
    ApikleyError,
    ApikleyInputError,
    ApikleyServerError,
    ApikleyTaskFailedError,
    ApikleyTaskTimeoutError,
)
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from airflow_provider_qwen.triggers.apikley import ApikleyTaskTrigger
from tests.conftest import BASE_URL
from tests.unit.fixtures import IMAGE_URL, RESULT_URL, TASK_ID, created, envelope, record

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


def test_blocking_wait_rides_out_a_burst_of_server_errors(requests_mock, context):
    requests_mock.post(CREATE_URL, json=created())
    burst = [{"json": envelope(code=500, msg="Server error")}, {"status_code": 502, "text": "<html>Bad Gateway</html>"}]
    requests_mock.get(RECORD_URL, [*burst * 4, {"json": record("success")}])
    result = make_operator(deferrable=False, poll_interval=0.01).execute(context)
    assert result["result_urls"] == [RESULT_URL]
    assert [request.method for request in requests_mock.request_history].count("POST") == 1


def test_blocking_wait_fails_once_the_error_budget_is_spent(requests_mock, context):
    requests_mock.post(CREATE_URL, json=created())
    failing = [{"json": envelope(code=500, msg="Server error")}] * 3
    requests_mock.get(RECORD_URL, [*failing, {"json": record("success")}])
    with pytest.raises(ApikleyServerError):
        make_operator(deferrable=False, poll_interval=0.01, max_consecutive_poll_errors=3).execute(context)
    assert requests_mock.call_count == 1 + 3


def test_blocking_wait_stops_at_once_when_the_key_is_refused(requests_mock, context):
    requests_mock.post(CREATE_URL, json=created())
    requests_mock.get(RECORD_URL, json=envelope(code=401, msg="You do not have access permissions"))
    with pytest.raises(ApikleyAuthError):
        make_operator(deferrable=False, poll_interval=0.01).execute(context)
    assert requests_mock.call_count == 2


def test_defers_even_when_the_first_status_query_fails_transiently(requests_mock, context):
    requests_mock.post(CREATE_URL, json=created())
    requests_mock.get(RECORD_URL, json=envelope(code=455, msg="Service unavailable"))
    with pytest.raises(TaskDeferred) as excinfo:
        make_operator(deferrable=True).execute(context)
    assert excinfo.value.trigger.apikley_task_id == TASK_ID
    assert requests_mock.call_count == 2


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


class FakeStateStore(dict):
    """Airflow 3.3's task state store, as the operator uses it."""

    def set(self, key, value):
        self[key] = value


def test_submitting_remembers_the_task_in_the_state_store(requests_mock):
    requests_mock.post(CREATE_URL, json=created())
    requests_mock.get(RECORD_URL, json=record("success"))
    store = FakeStateStore()
    make_operator().execute({"ti": mock.Mock(), "task_state_store": store})
    assert store["apikley_task"]["apikley_task_id"] == TASK_ID


@pytest.mark.parametrize("state", ["queuing", "generating"])
def test_a_retry_resumes_a_running_task_instead_of_paying_again(requests_mock, state):
    create = requests_mock.post(CREATE_URL, json=created("new-task"))
    requests_mock.get(RECORD_URL, json=record(state))
    store = FakeStateStore(apikley_task={"apikley_task_id": TASK_ID, "submitted_at": time.time() - 5})
    context = {"ti": mock.Mock(), "task_state_store": store}
    with pytest.raises(TaskDeferred) as excinfo:
        make_operator(deferrable=True).execute(context)
    assert create.call_count == 0
    assert excinfo.value.trigger.apikley_task_id == TASK_ID
    assert pushed(context) == {"apikley_task_id": TASK_ID}


def test_a_retry_finishes_a_task_that_already_succeeded(requests_mock):
    create = requests_mock.post(CREATE_URL, json=created("new-task"))
    requests_mock.get(RECORD_URL, json=record("success"))
    store = FakeStateStore(apikley_task={"apikley_task_id": TASK_ID, "submitted_at": time.time() - 60})
    result = make_operator(deferrable=True).execute({"ti": mock.Mock(), "task_state_store": store})
    assert (result["apikley_task_id"], result["state"], create.call_count) == (TASK_ID, "success", 0)


def test_a_retry_submits_anew_when_the_earlier_task_failed(requests_mock):
    requests_mock.post(CREATE_URL, json=created("new-task"))
    requests_mock.get(f"{RECORD_URL}?taskId={TASK_ID}", json=record("fail", fail_code="501"))
    requests_mock.get(f"{RECORD_URL}?taskId=new-task", json=record("success", task_id="new-task"))
    store = FakeStateStore(apikley_task={"apikley_task_id": TASK_ID, "submitted_at": 1.0})
    result = make_operator().execute({"ti": mock.Mock(), "task_state_store": store})
    assert result["apikley_task_id"] == "new-task"
    assert store["apikley_task"]["apikley_task_id"] == "new-task"


def test_resubmitting_a_failed_task_can_be_turned_off(requests_mock):
    create = requests_mock.post(CREATE_URL, json=created("new-task"))
    requests_mock.get(RECORD_URL, json=record("fail", fail_code="501", fail_msg="bad"))
    store = FakeStateStore(apikley_task={"apikley_task_id": TASK_ID, "submitted_at": 1.0})
    with pytest.raises(ApikleyTaskFailedError, match="failCode=501"):
        make_operator(resubmit_failed_task=False).execute({"ti": mock.Mock(), "task_state_store": store})
    assert create.call_count == 0


def test_a_task_apikley_forgot_is_submitted_anew(requests_mock):
    requests_mock.post(CREATE_URL, json=created("new-task"))
    requests_mock.get(f"{RECORD_URL}?taskId={TASK_ID}", json={"code": 422, "msg": "recordInfo is null"})
    requests_mock.get(f"{RECORD_URL}?taskId=new-task", json=record("success", task_id="new-task"))
    store = FakeStateStore(apikley_task={"apikley_task_id": TASK_ID, "submitted_at": 1.0})
    assert make_operator().execute({"ti": mock.Mock(), "task_state_store": store})["apikley_task_id"] == "new-task"


@pytest.mark.parametrize(
    ("store", "advice"), [(FakeStateStore(), "resumes waiting for it"), (None, "a retry submits a new task")]
)
def test_a_timeout_says_what_a_retry_will_do(context, store, advice):
    event = {"status": "timeout", "apikley_task_id": TASK_ID, "message": f"Apikley task {TASK_ID} did not finish"}
    with pytest.raises(ApikleyTaskTimeoutError, match=advice):
        make_operator().execute_complete({**context, "task_state_store": store}, event)


def test_execution_timeout_shortens_the_trigger_deadline(requests_mock):
    from datetime import datetime, timedelta

    requests_mock.post(CREATE_URL, json=created())
    requests_mock.get(RECORD_URL, json=record("queuing"))
    ti = mock.Mock(start_date=datetime.now(UTC) - timedelta(seconds=30))
    operator = make_operator(deferrable=True, timeout=3600, execution_timeout=timedelta(seconds=60))
    with pytest.raises(TaskDeferred) as excinfo:
        operator.execute({"ti": ti})
    assert 25 <= excinfo.value.trigger.deadline - time.time() <= 31


def test_the_poll_error_budget_reaches_the_trigger(requests_mock, context):
    requests_mock.post(CREATE_URL, json=created())
    requests_mock.get(RECORD_URL, json=record("queuing"))
    with pytest.raises(TaskDeferred) as excinfo:
        make_operator(deferrable=True, max_consecutive_poll_errors=25).execute(context)
    assert excinfo.value.trigger.max_consecutive_poll_errors == 25
