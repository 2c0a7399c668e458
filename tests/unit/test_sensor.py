from __future__ import annotations

from unittest import mock

import pytest

from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)

from airflow_provider_qwen.exceptions import ApikleyAuthError, ApikleyServerError
from airflow_provider_qwen.sensors.apikley import ApikleyTaskSensor
from tests.conftest import BASE_URL
from tests.unit.fixtures import IMAGE_URL, RESULT_URL, TASK_ID, envelope, record

RECORD_URL = f"{BASE_URL}/api/v1/jobs/recordInfo"
EXPECTED = {
    "apikley_task_id": TASK_ID,
    "state": "success",
    "result_urls": [RESULT_URL],
    "input": {"prompt": "sepia", "image_url": IMAGE_URL},
}


def make_sensor(**overrides) -> ApikleyTaskSensor:
    return ApikleyTaskSensor(**{"task_id": "wait", "apikley_task_id": TASK_ID, "poke_interval": 0.01, **overrides})


@pytest.fixture
def context():
    return {"ti": mock.Mock()}


def test_poke_mode_returns_the_same_dict_as_the_operator(requests_mock, context):
    requests_mock.get(RECORD_URL, [{"json": record("generating")}, {"json": record("success")}])
    assert make_sensor().execute(context) == EXPECTED
    assert requests_mock.call_count == 2


def test_poke_mode_fails_a_failed_generation_without_retries(requests_mock, context):
    requests_mock.get(RECORD_URL, json=record("fail", fail_code="501", fail_msg="bad image"))
    with pytest.raises(AirflowFailException, match=f"{TASK_ID} failed: failCode=501, failMsg=bad image"):
        make_sensor().execute(context)


def test_soft_fail_skips_a_failed_generation(requests_mock, context):
    requests_mock.get(RECORD_URL, json=record("fail"))
    with pytest.raises(AirflowSkipException):
        make_sensor(soft_fail=True).execute(context)


def test_poke_mode_times_out(requests_mock, context):
    requests_mock.get(RECORD_URL, json=record("queuing"))
    with pytest.raises(AirflowSensorTimeout):
        make_sensor(timeout=0.05).execute(context)


def test_poke_mode_rides_out_transient_errors_between_pokes(requests_mock, context):
    burst = [{"json": envelope(code=500, msg="Server error")}, {"status_code": 502, "text": "<html>Bad Gateway</html>"}]
    requests_mock.get(RECORD_URL, [*burst * 3, {"json": record("success")}])
    assert make_sensor().execute(context) == EXPECTED
    assert requests_mock.call_count == 7


def test_poke_mode_fails_once_the_error_budget_is_spent(requests_mock, context):
    requests_mock.get(RECORD_URL, json=envelope(code=500, msg="Server error"))
    with pytest.raises(ApikleyServerError):
        make_sensor(max_consecutive_poll_errors=3).execute(context)
    assert requests_mock.call_count == 3


def test_poke_mode_fails_at_once_when_the_key_is_refused(requests_mock, context):
    requests_mock.get(RECORD_URL, json=envelope(code=401, msg="You do not have access permissions"))
    with pytest.raises(ApikleyAuthError):
        make_sensor().execute(context)
    assert requests_mock.call_count == 1


def test_deferrable_mode_defers_even_when_the_first_query_fails_transiently(requests_mock, context):
    requests_mock.get(RECORD_URL, json=envelope(code=455, msg="Service unavailable"))
    with pytest.raises(TaskDeferred):
        make_sensor(deferrable=True).execute(context)
    assert requests_mock.call_count == 1


def test_deferrable_mode_defers_with_an_absolute_deadline(requests_mock, context):
    requests_mock.get(RECORD_URL, json=record("queuing"))
    with pytest.raises(TaskDeferred) as excinfo:
        make_sensor(deferrable=True, timeout=120, poke_interval=5).execute(context)
    trigger = excinfo.value.trigger
    assert (trigger.apikley_task_id, trigger.poll_interval) == (TASK_ID, 5)
    assert trigger.deadline > 1e9  # epoch seconds, not a duration
    # the "Apikley task" link works while the sensor waits
    context["ti"].xcom_push.assert_called_once_with(key="apikley_task_id", value=TASK_ID)


def test_deferrable_mode_returns_at_once_when_already_done(requests_mock, context):
    requests_mock.get(RECORD_URL, json=record("success"))
    assert make_sensor(deferrable=True).execute(context) == EXPECTED


def test_the_task_id_is_templated():
    assert "apikley_task_id" in ApikleyTaskSensor.template_fields


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({"status": "timeout", "apikley_task_id": TASK_ID, "message": "late"}, AirflowSensorTimeout),
        ({"status": "failed", "apikley_task_id": TASK_ID, "fail_code": "1"}, AirflowFailException),
    ],
)
def test_execute_complete_maps_timeout_and_failure_to_sensor_outcomes(context, event, error):
    with pytest.raises(error):
        make_sensor(deferrable=True).execute_complete(context, event)


def test_execute_complete_success(context):
    event = {**EXPECTED, "status": "success"}
    assert make_sensor(deferrable=True).execute_complete(context, event) == EXPECTED


def test_the_poll_error_budget_reaches_the_trigger(requests_mock, context):
    requests_mock.get(RECORD_URL, json=record("queuing"))
    with pytest.raises(TaskDeferred) as excinfo:
        make_sensor(deferrable=True, max_consecutive_poll_errors=3).execute(context)
    assert excinfo.value.trigger.max_consecutive_poll_errors == 3
