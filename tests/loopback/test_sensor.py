from __future__ import annotations

import json
import re
import time
from unittest import mock

import pytest

from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)

from airflow_provider_qwen.emulator.generation import EMULATED_FAILURE
from airflow_provider_qwen.emulator.script import envelope, html_page, task_record
from airflow_provider_qwen.exceptions import ApikleyAuthError, ApikleyInputError, ApikleyServerError
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from airflow_provider_qwen.sensors.apikley import ApikleyTaskSensor
from airflow_provider_qwen.triggers.apikley import ApikleyTaskTrigger
from tests.conftest import submit_edit

#: An id for the tests that never reach Apikley.
TASK_ID = "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e"
MODEL = "qwen/image-to-image"
#: A task that stays queuing for a minute: longer than any test waits.
STAYS_QUEUING = (0.0, 60.0, 0.0)
SERVER_ERROR = envelope(code=500, msg="Server error")


def make_sensor(apikley_task_id: str = TASK_ID, **overrides) -> ApikleyTaskSensor:
    return ApikleyTaskSensor(
        **{"task_id": "wait", "apikley_task_id": apikley_task_id, "poke_interval": 0.01, **overrides}
    )


@pytest.fixture
def context():
    return {"ti": mock.Mock()}


def finished(apikley, task_id: str) -> str:
    """``task_id``, once the emulator has ended it."""
    apikley.wait_until_ended(task_id)
    return task_id


def expected(apikley, task_id: str, image_url: str) -> dict:
    """What the operator returns for a successful edit of ``image_url``: the same dict the sensor must return."""
    return {
        "apikley_task_id": task_id,
        "state": "success",
        "result_urls": apikley.state.tasks[task_id].result_urls,
        "input": {"prompt": "sepia", "image_url": image_url},
        "credits_consumed": apikley.state.settings.cost_per_task,
    }


def test_poke_mode_returns_the_same_dict_as_the_operator(apikley, source_image_url, context):
    task_id = finished(apikley, submit_edit(source_image_url))
    still_generating = task_record(task_id, "generating", input={"prompt": "sepia", "image_url": source_image_url})
    apikley.script("recordInfo", envelope(still_generating))
    result = make_sensor(task_id).execute(context)
    assert result == expected(apikley, task_id, source_image_url)
    assert result["result_urls"] == [f"{apikley.base_url}/results/{task_id}/0.png"]
    assert len(apikley.seen("recordInfo")) == 2  # pokes again while generating, stops once done


def test_poke_mode_fails_a_failed_generation_without_retries(apikley, source_image_url, context):
    apikley.configure(fail_fraction=1.0)
    task_id = submit_edit(source_image_url)
    fail_code, fail_message = EMULATED_FAILURE
    message = re.escape(f"{task_id} failed: failCode={fail_code}, failMsg={fail_message}")
    with pytest.raises(AirflowFailException, match=message):
        make_sensor(task_id).execute(context)


def test_soft_fail_skips_a_failed_generation(apikley, source_image_url, context):
    apikley.configure(fail_fraction=1.0)
    with pytest.raises(AirflowSkipException):
        make_sensor(submit_edit(source_image_url), soft_fail=True).execute(context)


def test_poke_mode_times_out(apikley, source_image_url, context):
    apikley.configure(latency=STAYS_QUEUING)
    with pytest.raises(AirflowSensorTimeout):
        make_sensor(submit_edit(source_image_url), timeout=0.05).execute(context)


def test_poke_mode_rides_out_transient_errors_between_pokes(apikley, source_image_url, context):
    task_id = finished(apikley, submit_edit(source_image_url))
    apikley.script("recordInfo", *[SERVER_ERROR, html_page(status=502)] * 3)
    assert make_sensor(task_id).execute(context) == expected(apikley, task_id, source_image_url)
    assert len(apikley.seen("recordInfo")) == 7


def test_poke_mode_fails_once_the_error_budget_is_spent(apikley, source_image_url, context):
    task_id = submit_edit(source_image_url)
    apikley.script("recordInfo", envelope(code=500, msg="Server error", times=None))
    with pytest.raises(ApikleyServerError):
        make_sensor(task_id, max_consecutive_poll_errors=3).execute(context)
    assert len(apikley.seen("recordInfo")) == 3


def test_poke_mode_fails_at_once_when_the_key_is_refused(apikley, source_image_url, context, monkeypatch):
    task_id = submit_edit(source_image_url)
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", apikley.airflow_connection(api_key="sk-revoked"))
    with pytest.raises(ApikleyAuthError):
        make_sensor(task_id).execute(context)
    assert len(apikley.seen("recordInfo")) == 1


def test_deferrable_mode_defers_even_when_the_first_query_fails_transiently(apikley, source_image_url, context):
    task_id = submit_edit(source_image_url)
    apikley.configure(maintenance_seconds=60)  # every call answers code 455 from now on
    with pytest.raises(TaskDeferred):
        make_sensor(task_id, deferrable=True).execute(context)
    assert len(apikley.seen("recordInfo")) == 1


def test_deferrable_mode_defers_with_an_absolute_deadline(apikley, source_image_url, context):
    apikley.configure(latency=STAYS_QUEUING)
    task_id = submit_edit(source_image_url)
    with pytest.raises(TaskDeferred) as excinfo:
        make_sensor(task_id, deferrable=True, timeout=120, poke_interval=5).execute(context)
    trigger = excinfo.value.trigger
    assert (trigger.apikley_task_id, trigger.poll_interval) == (task_id, 5)
    assert trigger.deadline > 1e9  # epoch seconds, not a duration
    # the "Apikley task" link works while the sensor waits
    context["ti"].xcom_push.assert_called_once_with(key="apikley_task_id", value=task_id)


def test_deferrable_mode_returns_at_once_when_already_done(apikley, source_image_url, context):
    task_id = finished(apikley, submit_edit(source_image_url))
    assert make_sensor(task_id, deferrable=True).execute(context) == expected(apikley, task_id, source_image_url)


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
    summary = {
        "apikley_task_id": TASK_ID,
        "state": "success",
        "result_urls": ["https://files.example.org/out/shoe-edited.png"],
        "input": {"prompt": "sepia", "image_url": "https://files.example.org/in/shoe.png"},
        "credits_consumed": 1.0,
    }
    event = {**summary, "status": "success"}
    assert make_sensor(deferrable=True).execute_complete(context, event) == summary


def test_the_poll_error_budget_reaches_the_trigger(apikley, source_image_url, context):
    apikley.configure(latency=STAYS_QUEUING)
    with pytest.raises(TaskDeferred) as excinfo:
        make_sensor(submit_edit(source_image_url), deferrable=True, max_consecutive_poll_errors=3).execute(context)
    assert excinfo.value.trigger.max_consecutive_poll_errors == 3


def test_the_sensor_takes_the_dict_the_operator_returned(apikley, source_image_url, context):
    apikley.configure(latency=STAYS_QUEUING)
    task_id = submit_edit(source_image_url)
    returned = {"apikley_task_id": task_id, "state": "waiting", "result_urls": [], "input": {}}
    with pytest.raises(TaskDeferred) as excinfo:
        make_sensor(returned, deferrable=True).execute(context)
    assert excinfo.value.trigger.apikley_task_id == task_id
    context["ti"].xcom_push.assert_called_once_with(key="apikley_task_id", value=task_id)


@pytest.mark.parametrize("value", [{"state": "waiting"}, {"apikley_task_id": "../../etc"}, None])
def test_a_value_without_a_task_id_is_refused_before_any_request(apikley, context, value):
    with pytest.raises(ApikleyInputError, match="apikley_task_id="):
        make_sensor(value).execute(context)
    assert apikley.seen() == []


def test_a_sensor_maps_over_the_operators_output_as_it_is():
    from airflow.providers.common.compat.sdk import DAG

    from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator

    with DAG(dag_id="two_step", schedule=None):
        edits = QwenImageToImageOperator.partial(task_id="edit", wait_for_completion=False).expand(
            prompt=["a", "b"], image_url=["https://example.org/a.png", "https://example.org/b.png"]
        )
        with pytest.raises(ValueError, match="cannot map over XCom with custom key"):
            ApikleyTaskSensor.partial(task_id="by_key").expand(apikley_task_id=edits.output["apikley_task_id"])
        waits = ApikleyTaskSensor.partial(task_id="wait").expand(apikley_task_id=edits.output)
    assert waits.upstream_task_ids == {"edit"}


def test_by_default_the_sensor_follows_apikleys_advised_cadence(apikley, source_image_url, context):
    apikley.configure(latency=STAYS_QUEUING)
    sensor = ApikleyTaskSensor(task_id="wait", apikley_task_id=submit_edit(source_image_url), deferrable=True)
    assert sensor.poke_interval == 3.0  # poking: the slow end of the advised 2-3 s, not 10 s
    with pytest.raises(TaskDeferred) as excinfo:
        sensor.execute(context)
    assert excinfo.value.trigger.poll_interval is None  # deferred: the advised cadence, slowing with age


def test_a_deferred_sensors_trigger_asks_one_interval_after_the_sensors_own_check(apikley, source_image_url, context):
    apikley.configure(latency=STAYS_QUEUING)
    sensor = ApikleyTaskSensor(task_id="wait", apikley_task_id=submit_edit(source_image_url), deferrable=True)
    with pytest.raises(TaskDeferred) as excinfo:
        sensor.execute(context)
    trigger = excinfo.value.trigger
    checked_at = apikley.seen("recordInfo")[-1].at
    assert trigger.submitted_at + trigger.expected_duration == pytest.approx(checked_at + 3.0, abs=1.0)


# ---- two steps: the sensor copies what the operator did not wait for ------------------------------


@pytest.mark.parametrize("deferrable", [False, True], ids=["poking", "deferred"])
def test_output_path_copies_the_results_as_the_operator_would(apikley, source_image_url, context, tmp_path, deferrable):
    task_id = finished(apikley, submit_edit(source_image_url))
    result = make_sensor(task_id, deferrable=deferrable, output_path=f"file://{tmp_path}/edits").execute(context)
    (stored,) = result["stored"]
    assert stored["uri"] == f"file://{tmp_path}/edits/shoe.png"  # named after the task's source image
    assert (tmp_path / "edits" / "shoe.png").stat().st_size == stored["size"] > 0


def test_a_deferred_wait_copies_the_results_when_it_resumes(apikley, source_image_url, context, tmp_path):
    task_id = finished(apikley, submit_edit(source_image_url))
    event = {"status": "success", "apikley_task_id": task_id, "result_urls": apikley.state.tasks[task_id].result_urls}
    result = make_sensor(task_id, output_path=f"file://{tmp_path}").execute_complete(context, event)
    assert [item["uri"] for item in result["stored"]] == [f"file://{tmp_path}/{task_id}-0.png"]


#: What the operator that hands its output_path on calls the results: the sensor keeps the name.
HANDED_ON_NAME = "{source_stem}-retouched"


def submit_handing_on(image_url: str, output_path: str) -> dict:
    """The dict of an operator that submits without waiting and hands ``output_path`` and its result name on."""
    return QwenImageToImageOperator(
        task_id="submit",
        prompt="sepia",
        image_url=image_url,
        wait_for_completion=False,
        output_path=output_path,
        result_name=HANDED_ON_NAME,
    ).execute({"ti": mock.Mock()})


def test_the_output_path_handed_on_survives_a_deferral_to_a_fresh_instance(
    apikley, source_image_url, context, tmp_path
):
    apikley.configure(latency=(0.0, 0.5, 0.0))  # still queuing at the sensor's first check: it defers
    submitted = submit_handing_on(source_image_url, f"file://{tmp_path}/handed-on")
    with pytest.raises(TaskDeferred) as excinfo:
        make_sensor(submitted, deferrable=True).execute(context)
    next_kwargs = excinfo.value.kwargs
    task_id = finished(apikley, submitted["apikley_task_id"])
    event = {"status": "success", "apikley_task_id": task_id, "result_urls": apikley.state.tasks[task_id].result_urls}

    # a worker resumes on a fresh instance: nothing execute() set on the first one is there
    result = make_sensor(submitted, deferrable=True).execute_complete(context, event, **next_kwargs)
    assert [item["uri"] for item in result["stored"]] == [f"file://{tmp_path}/handed-on/shoe-retouched.png"]
    assert (tmp_path / "handed-on" / "shoe-retouched.png").stat().st_size == result["stored"][0]["size"] > 0


async def test_the_output_path_handed_on_comes_back_in_the_triggers_event(apikley, source_image_url, context, tmp_path):
    apikley.configure(latency=(0.0, 0.5, 0.0))  # still queuing at the sensor's first check: it defers
    submitted = submit_handing_on(source_image_url, f"file://{tmp_path}/handed-on")
    before = time.time()
    with pytest.raises(TaskDeferred) as excinfo:
        make_sensor(submitted, deferrable=True).execute(context)
    kwargs = excinfo.value.trigger.serialize()[1]
    assert before <= kwargs["deferred_at"] <= time.time()
    trigger = ApikleyTaskTrigger(**json.loads(json.dumps(kwargs)))  # as the triggerer rebuilds it
    (event,) = [event.payload async for event in trigger.run()]

    # ``airflow dags test`` resumes a fresh instance with the event alone, and no other kwargs: even
    # one that knows only the task id stores where, and as, the operator handed on
    result = make_sensor(submitted["apikley_task_id"], deferrable=True).execute_complete(context, event)
    assert [item["uri"] for item in result["stored"]] == [f"file://{tmp_path}/handed-on/shoe-retouched.png"]
    assert (tmp_path / "handed-on" / "shoe-retouched.png").stat().st_size == result["stored"][0]["size"] > 0


def test_the_output_path_the_operator_hands_on_is_used(apikley, source_image_url, context, tmp_path):
    submitted = submit_handing_on(source_image_url, f"file://{tmp_path}/handed-on")
    apikley.wait_until_ended(submitted["apikley_task_id"])
    result = make_sensor(submitted).execute(context)
    assert [item["uri"] for item in result["stored"]] == [f"file://{tmp_path}/handed-on/shoe-retouched.png"]


@pytest.mark.parametrize("deferrable", [False, True], ids=["poking", "deferred"])
def test_a_sensors_own_result_name_and_map_index_name_its_copies(apikley, source_image_url, tmp_path, deferrable):
    task_id = finished(apikley, submit_edit(source_image_url))
    mapped = {"ti": mock.Mock(map_index=2)}
    default = make_sensor(task_id, deferrable=deferrable, output_path=f"file://{tmp_path}/a").execute(mapped)
    named = make_sensor(
        task_id, deferrable=deferrable, output_path=f"file://{tmp_path}/b", result_name="{source_stem}-{index}-final"
    ).execute(mapped)
    assert [item["uri"] for item in default["stored"]] == [f"file://{tmp_path}/a/shoe-2.png"]
    assert [item["uri"] for item in named["stored"]] == [f"file://{tmp_path}/b/shoe-2-final.png"]


def test_a_result_name_that_is_not_a_file_name_is_refused_before_any_query(apikley, context):
    sensor = make_sensor(TASK_ID, output_path="file:///tmp/x", result_name="../{source_stem}")
    with pytest.raises(ApikleyInputError, match=r"result_name='\.\./\{source_stem\}'"):
        sensor.execute(context)
    assert apikley.seen("recordInfo") == []


@pytest.mark.parametrize(("receiver", "awaits"), [(True, True), (False, False)])
def test_a_task_that_calls_back_to_the_receiver_is_awaited_on_its_callback(
    apikley, source_image_url, context, monkeypatch, receiver, awaits
):
    from airflow_provider_qwen.api_server.urls import callback_url

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com")
    apikley.configure(latency=STAYS_QUEUING)
    url = callback_url() if receiver else "https://hooks.example.com/apikley"
    submit = QwenImageToImageOperator(
        task_id="submit", prompt="sepia", image_url=source_image_url, callback_url=url, wait_for_completion=False
    )
    handed_on = submit.execute({"ti": mock.Mock()})
    assert handed_on.get("awaits_callback", False) is awaits
    with pytest.raises(TaskDeferred) as excinfo:
        make_sensor(handed_on, deferrable=True).execute(context)
    assert excinfo.value.trigger.awaits_callback is awaits
    with pytest.raises(TaskDeferred) as excinfo:  # the operator's own wait alike
        QwenImageToImageOperator(
            task_id="edit", prompt="sepia", image_url=source_image_url, callback_url=url, deferrable=True
        ).execute({"ti": mock.Mock()})
    assert excinfo.value.trigger.awaits_callback is awaits
