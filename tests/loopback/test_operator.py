"""
The Qwen operator and the generic one, through the same tests: every test runs once with
:class:`QwenImageToImageOperator` and once with :class:`ApikleyCreateTaskOperator` given the same
input (checked against the model's published schema), except those marked ``qwen_only``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime
from functools import partial
from unittest import mock

import pytest
from structlog.testing import capture_logs

from airflow.providers.common.compat.sdk import Asset, AssetAlias, ObjectStoragePath, TaskDeferred

from airflow_provider_qwen.emulator.generation import EMULATED_FAILURE
from airflow_provider_qwen.emulator.script import dropped, envelope, html_page
from airflow_provider_qwen.exceptions import (
    ApikleyAuthError,
    ApikleyConnectionError,
    ApikleyError,
    ApikleyInputError,
    ApikleyInsufficientCreditsError,
    ApikleyNotFoundError,
    ApikleyOrphanedIntentError,
    ApikleyServerError,
    ApikleyTaskFailedError,
    ApikleyTaskTimeoutError,
    ApikleyUnreadableStateError,
)
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.links import PUSHED_ID_ATTRIBUTE
from airflow_provider_qwen.models import QWEN_IMAGE_TO_IMAGE
from airflow_provider_qwen.operators.apikley import ApikleyCreateTaskOperator
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from airflow_provider_qwen.resume import request_fingerprint
from airflow_provider_qwen.triggers.apikley import ApikleyTaskTrigger
from tests.conftest import OPERATOR_KINDS, edit_operator

#: For the tests that never reach Apikley: a task id, a source and a result as Apikley names them.
TASK_ID = "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e"
IMAGE_URL = "https://files.example.org/in/shoe.png"
RESULT_URL = "https://files.example.org/out/shoe-edited.png"
SENT_INPUT = {"prompt": "sepia", "image_url": IMAGE_URL, "strength": 0.6, "seed": 7}

#: Emulator latencies (waiting, queuing, generating) that keep a task queuing, or generating, for the whole test.
STAYS_QUEUING = (0.0, 600.0, 0.0)
STAYS_GENERATING = (0.0, 0.0, 600.0)


#: Which operator :func:`make_operator` builds in the running test.
KIND = "qwen"


def pytest_generate_tests(metafunc):
    if "operator_kind" in metafunc.fixturenames:
        only_qwen = metafunc.definition.get_closest_marker("qwen_only") is not None
        metafunc.parametrize("operator_kind", ["qwen"] if only_qwen else OPERATOR_KINDS)


@pytest.fixture(autouse=True)
def _operator_kind(operator_kind, monkeypatch):
    monkeypatch.setitem(globals(), "KIND", operator_kind)


def make_operator(**overrides) -> ApikleyCreateTaskOperator:
    """An edit of ``IMAGE_URL``: the Qwen operator, or the generic one given the same input fields."""
    arguments = {
        "task_id": "edit",
        "prompt": "sepia",
        "image_url": IMAGE_URL,
        "strength": 0.6,
        "seed": 7,
        "poll_interval": 0.01,
        **overrides,
    }
    return edit_operator(KIND, **arguments)


@pytest.fixture
def edit(source_image_url):
    """``make_operator``, editing an image the emulator serves."""
    return partial(make_operator, image_url=source_image_url)


@pytest.fixture
def sent_input(source_image_url) -> dict:
    """The ``input`` the operator sends for the emulator's image."""
    return {**SENT_INPUT, "image_url": source_image_url}


@pytest.fixture
def context():
    return {"ti": mock.Mock()}


def pushed(context) -> dict:
    return {call.kwargs["key"]: call.kwargs["value"] for call in context["ti"].xcom_push.call_args_list}


def task_ids(apikley) -> list[str]:
    """The ids of the tasks the emulator accepted, oldest first."""
    return list(apikley.state.tasks)


def earlier_task(apikley, sent_input, *, ended: bool = False) -> str:
    """A task an earlier try submitted; with ``ended``, once it has ended."""
    task_id = ApikleyHook().create_task(QWEN_IMAGE_TO_IMAGE, sent_input)
    if ended:
        apikley.wait_until_ended(task_id)
    return task_id


def test_defers_to_the_trigger_after_pushing_the_task_id(apikley, edit, sent_input, context):
    apikley.configure(latency=STAYS_QUEUING)
    operator = edit(deferrable=True, timeout=600, poll_interval=4)
    before = time.time()
    with pytest.raises(TaskDeferred) as excinfo:
        operator.execute(context)
    (task_id,) = task_ids(apikley)
    assert pushed(context) == {"apikley_task_id": task_id}
    trigger = excinfo.value.trigger
    assert isinstance(trigger, ApikleyTaskTrigger)
    assert trigger.apikley_task_id == task_id
    assert before + 600 <= trigger.deadline <= time.time() + 600
    assert trigger.poll_interval == 4
    assert excinfo.value.method_name == "execute_complete"
    assert apikley.seen("createTask")[0].json()["input"] == sent_input
    assert before <= trigger.deferred_at <= time.time()  # the settle time counts from here


def test_defers_right_after_submitting_without_asking_first(apikley, edit, context):
    with pytest.raises(TaskDeferred) as excinfo:
        edit(deferrable=True, expected_duration=7.5).execute(context)
    trigger = excinfo.value.trigger
    assert [request.endpoint for request in apikley.seen()] == ["createTask"]  # the trigger asks when it is due
    assert (trigger.model, trigger.expected_duration) == (QWEN_IMAGE_TO_IMAGE, 7.5)


@pytest.mark.parametrize(
    ("arguments", "ends_in_triggerer"),
    [
        ({}, True),
        ({"output_path": "file:///tmp/edits"}, True),  # the trigger copies the results
        ({"output_path": ObjectStoragePath("file:///tmp/edits")}, False),
        ({"on_success_callback": print}, False),
        ({"multiple_outputs": True}, False),
        ({"do_xcom_push": False}, False),
        ({"end_in_triggerer": False}, False),
        ({"outlets": [Asset("s3://bucket/edited")]}, False),  # asset events are recorded from a worker
        ({"outlets": [AssetAlias("edited")]}, False),
        ({"post_execute": print}, False),
    ],
)
def test_a_success_ends_in_the_triggerer_only_when_no_worker_work_is_left(
    apikley, edit, context, arguments, ends_in_triggerer
):
    with pytest.raises(TaskDeferred) as excinfo:
        edit(deferrable=True, **arguments).execute(context)
    assert excinfo.value.trigger.end_task_on_success is ends_in_triggerer


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"outlets": [Asset("s3://bucket/edited")]}, "outlets=[Asset("),
        ({"on_success_callback": print}, "on_success_callback"),
        ({"post_execute": print}, "post_execute"),
        ({"multiple_outputs": True}, "multiple_outputs=True"),
        ({"do_xcom_push": False}, "do_xcom_push=False"),
        ({"output_path": ObjectStoragePath("file:///tmp/edits")}, "output_path=ObjectStoragePath("),
    ],
)
def test_ending_in_the_triggerer_is_refused_when_the_dag_is_parsed_with_what_only_a_worker_keeps(
    apikley, edit, arguments, named
):
    with pytest.raises(ApikleyInputError) as excinfo:
        edit(deferrable=True, end_in_triggerer=True, **arguments)
    assert str(excinfo.value).startswith("end_in_triggerer=True: ")
    assert named in str(excinfo.value)
    assert apikley.seen() == []


def test_a_task_the_trigger_could_not_tell_mapping_for_resumes_on_a_worker(apikley, edit, context, monkeypatch):
    monkeypatch.setattr("airflow_provider_qwen._compat.maps_over_result", lambda operator: None)
    context["ti"].map_index = -1
    with pytest.raises(TaskDeferred) as excinfo:
        edit(deferrable=True).execute(context)
    assert excinfo.value.trigger.end_task_on_success is False


async def fire(trigger: ApikleyTaskTrigger) -> dict:
    """The one event ``trigger`` fires, rebuilt from its serialized arguments as a triggerer would."""
    kwargs = trigger.serialize()[1]
    (event,) = [event.payload async for event in ApikleyTaskTrigger(**json.loads(json.dumps(kwargs))).run()]
    return event


async def test_a_subclass_overriding_execute_complete_resumes_on_a_worker_that_runs_it(apikley, edit, context):
    published = []

    class Publishing:
        """A team's override: publish each edit once the provider has stored it."""

        def execute_complete(self, context, event=None):
            result = super().execute_complete(context, event)
            published.append(result["apikley_task_id"])
            return result

    with pytest.raises(TaskDeferred) as excinfo:
        edit(deferrable=True, mixin=Publishing).execute(context)
    assert excinfo.value.trigger.serialize()[1]["end_task_on_success"] is False
    event = await fire(excinfo.value.trigger)

    result = edit(deferrable=True, mixin=Publishing).execute_complete(context, event)  # a fresh instance resumes
    assert result["state"] == "success"
    assert published == [result["apikley_task_id"]]


async def test_the_resumed_worker_stores_in_the_folder_execute_checked(apikley, edit, context, tmp_path):
    checked, rendered_again = tmp_path / "checked", tmp_path / "rendered-again"
    with pytest.raises(TaskDeferred) as excinfo:
        edit(deferrable=True, end_in_triggerer=False, output_path=f"file://{checked}").execute(context)
    event = await fire(excinfo.value.trigger)

    # a template that renders differently on resuming (a timestamp) must not move the results
    result = edit(deferrable=True, output_path=f"file://{rendered_again}").execute_complete(context, event)
    (stored,) = result["stored"]
    assert stored["uri"] == f"file://{checked}/shoe.png"  # named after the source, tests/shoe.png
    assert not rendered_again.exists()


def test_a_resumed_instance_marks_the_id_its_link_shows(apikley, edit, sent_input, context):
    task_id = apikley.wait_until_ended(ApikleyHook().create_task(QWEN_IMAGE_TO_IMAGE, sent_input)).task_id
    event = {"status": "success", "apikley_task_id": task_id, "result_urls": apikley.state.tasks[task_id].result_urls}
    operator = edit()  # a fresh instance, as a worker resuming a deferred task has
    operator.execute_complete(context, event)
    assert getattr(operator, PUSHED_ID_ATTRIBUTE) == task_id


@pytest.mark.parametrize(
    ("selective", "enabled", "disabled_for_operators", "ends_in_triggerer"),
    [
        (False, False, False, False),  # OpenLineage on for every task
        (True, False, False, True),  # selective, and this task not enabled: no listener asks
        (True, True, False, False),  # selective, and this task enabled
        (False, False, True, True),  # this operator's lineage disabled
    ],
    ids=["enabled", "selective-not-this-task", "selective-this-task", "operator-disabled"],
)
def test_a_task_openlineage_waits_for_ends_on_a_worker(
    apikley, edit, context, monkeypatch, selective, enabled, disabled_for_operators, ends_in_triggerer
):
    pytest.importorskip("airflow.providers.openlineage")
    from airflow.providers.openlineage import conf
    from airflow.providers.openlineage.utils.selective_enable import enable_lineage

    monkeypatch.setattr(conf, "is_disabled", lambda: False)
    monkeypatch.setattr(conf, "selective_enable", lambda: selective)
    operator = edit(deferrable=True)
    disabled = {f"{type(operator).__module__}.{type(operator).__name__}"} if disabled_for_operators else set()
    monkeypatch.setattr(conf, "disabled_operators", lambda: disabled)
    if enabled:
        enable_lineage(operator)
    with pytest.raises(TaskDeferred) as excinfo:
        operator.execute(context)
    assert excinfo.value.trigger.end_task_on_success is ends_in_triggerer


def test_a_success_the_trigger_ended_reads_the_same_result_when_resumed_anyway(apikley, edit, sent_input, context):
    # ``dag.test()`` resumes on the worker even after the trigger ended the task itself
    task_id = apikley.wait_until_ended(ApikleyHook().create_task(QWEN_IMAGE_TO_IMAGE, sent_input)).task_id
    context["ti"].xcom_pull.return_value = task_id
    result = edit().execute_complete(context, event="success")
    result_urls = apikley.state.tasks[task_id].result_urls
    assert result == {
        "apikley_task_id": task_id,
        "state": "success",
        "result_urls": result_urls,
        "input": sent_input,
        "credits_consumed": 1.0,
    }
    ti = context["ti"]  # a mapped edit reads its own map index's id, not every map index's
    ti.xcom_pull.assert_called_once_with(task_ids=ti.task_id, key="apikley_task_id", map_indexes=ti.map_index)


def test_waits_in_the_worker_when_not_deferrable(apikley, edit, context):
    result = edit(deferrable=False).execute(context)
    (task_id,) = task_ids(apikley)
    assert result["result_urls"] == apikley.state.tasks[task_id].result_urls != []
    assert len(apikley.seen("createTask")) == 1
    assert len(apikley.seen("recordInfo")) > 1  # it asked while the task ran, and again once it succeeded


def test_blocking_wait_times_out_naming_the_task(apikley, edit, context):
    apikley.configure(latency=STAYS_GENERATING)
    with pytest.raises(ApikleyTaskTimeoutError) as excinfo:
        edit(deferrable=False, timeout=0.1).execute(context)
    (task_id,) = task_ids(apikley)
    assert task_id in str(excinfo.value)


def test_blocking_wait_rides_out_a_burst_of_server_errors(apikley, edit, context):
    apikley.script("recordInfo", *[envelope(code=500, msg="Server error"), html_page(status=502)] * 4)
    result = edit(deferrable=False).execute(context)
    (task_id,) = task_ids(apikley)
    assert result["result_urls"] == apikley.state.tasks[task_id].result_urls != []
    assert len(apikley.seen("recordInfo")) > 8
    assert len(apikley.seen("createTask")) == 1


def test_blocking_wait_fails_once_the_error_budget_is_spent(apikley, edit, context):
    apikley.script("recordInfo", *[envelope(code=500, msg="Server error")] * 3)
    with pytest.raises(ApikleyServerError):
        edit(deferrable=False, max_consecutive_poll_errors=3).execute(context)
    assert [request.endpoint for request in apikley.seen()] == ["createTask"] + ["recordInfo"] * 3


def test_blocking_wait_stops_at_once_when_the_key_is_refused(apikley, edit, context):
    apikley.script("recordInfo", envelope(code=401, msg="You do not have access permissions"))
    with pytest.raises(ApikleyAuthError):
        edit(deferrable=False).execute(context)
    assert [request.endpoint for request in apikley.seen()] == ["createTask", "recordInfo"]


def test_failed_generation_fails_with_task_id_code_and_message(apikley, edit, context):
    apikley.configure(fail_fraction=1.0)
    with pytest.raises(ApikleyTaskFailedError) as excinfo:
        edit().execute(context)
    (task_id,) = task_ids(apikley)
    fail_code, fail_message = EMULATED_FAILURE
    assert (
        str(excinfo.value)
        == f"Apikley task {task_id} failed: failCode={fail_code}, failMsg={fail_message}; 1 credits charged"
    )


def test_without_waiting_returns_right_after_submitting(apikley, edit, sent_input, context):
    result = edit(wait_for_completion=False).execute(context)
    (task_id,) = task_ids(apikley)
    assert result == {
        "apikley_task_id": task_id,
        "state": "waiting",
        "result_urls": [],
        "input": sent_input,
        "credits_consumed": None,
    }
    assert [request.endpoint for request in apikley.seen()] == ["createTask"]
    assert pushed(context) == {"apikley_task_id": task_id}


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
@pytest.mark.qwen_only  # the generic operator's own checks are tested below
def test_bad_input_fails_before_any_request(apikley, edit, context, field, value):
    with pytest.raises(ApikleyInputError, match=f"{field}="):
        edit(**{field: value}).execute(context)
    assert apikley.seen() == []
    context["ti"].xcom_push.assert_not_called()


def test_execute_complete_success_returns_the_summary_with_the_sent_input(context):
    event = {
        "status": "success",
        "apikley_task_id": TASK_ID,
        "result_urls": [RESULT_URL],
        "input": {},
        "credits_consumed": 2.5,
    }
    assert make_operator().execute_complete(context, event) == {
        "apikley_task_id": TASK_ID,
        "state": "success",
        "result_urls": [RESULT_URL],
        "input": SENT_INPUT,
        "credits_consumed": 2.5,
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


@pytest.mark.qwen_only
def test_every_input_field_and_the_callback_are_templated():
    fields = set(QwenImageToImageOperator.template_fields)
    assert {"prompt", "image_url", "strength", "seed", "guidance_scale", "callback_url", "apikley_conn_id"} <= fields
    assert len(fields) == 14  # and result_name


def test_output_path_copies_each_result_and_reports_it(apikley, context, tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + b"\x01" * 64
    result_url = apikley.put_file("out/shoe-edited.png", png, "image/png")
    event = {"status": "success", "apikley_task_id": TASK_ID, "result_urls": [result_url], "input": {}}
    result = make_operator(output_path=f"file://{tmp_path}/edits").execute_complete(context, event)
    (stored,) = result["stored"]
    assert stored["uri"] == f"file://{tmp_path}/edits/shoe.png"  # named after IMAGE_URL's file
    assert (tmp_path / "edits" / "shoe.png").read_bytes() == png
    assert (stored["size"], stored["content_type"]) == (len(png), "image/png")


def test_without_output_path_nothing_is_downloaded(apikley, context):
    result_url = apikley.put_file("out/shoe-edited.png", b"\x89PNG\r\n\x1a\n", "image/png")
    event = {"status": "success", "apikley_task_id": TASK_ID, "result_urls": [result_url], "input": {}}
    assert "stored" not in make_operator().execute_complete(context, event)
    assert apikley.seen() == []


class FakeStateStore(dict):
    """Airflow 3.3's task state store, as the operator uses it."""

    def set(self, key, value):
        self[key] = value


def saved_task(task_id: str, input: dict, submitted_at: float) -> dict:
    """What a try saves once Apikley created ``task_id`` for an edit of ``input``."""
    fingerprint = request_fingerprint(QWEN_IMAGE_TO_IMAGE, input, None)
    return {"apikley_task_id": task_id, "submitted_at": submitted_at, "fingerprint": fingerprint}


def test_submitting_remembers_the_task_in_the_state_store(apikley, edit):
    store = FakeStateStore()
    edit().execute({"ti": mock.Mock(), "task_state_store": store})
    assert store["apikley_task"]["apikley_task_id"] == task_ids(apikley)[0]


class ReadCountingStateStore(FakeStateStore):
    """The same store, counting its reads: each is a call to the api-server on a real worker."""

    reads = 0

    def get(self, key, default=None):
        self.reads += 1
        return super().get(key, default)


@pytest.mark.parametrize(("try_number", "creates", "reads"), [(1, 2, 0), (2, 1, 1)], ids=["first try", "retry"])
def test_only_a_retry_reads_the_state_store_before_submitting(apikley, edit, sent_input, try_number, creates, reads):
    task_id = earlier_task(apikley, sent_input, ended=True)  # what a retry would find
    store = ReadCountingStateStore(apikley_task=saved_task(task_id, sent_input, time.time() - 60))
    edit().execute({"ti": mock.Mock(try_number=try_number), "task_state_store": store})
    assert (len(apikley.seen("createTask")), store.reads) == (creates, reads)


@pytest.mark.parametrize("latency", [STAYS_QUEUING, STAYS_GENERATING], ids=["queuing", "generating"])
def test_a_retry_resumes_a_running_task_instead_of_paying_again(apikley, edit, sent_input, latency):
    apikley.configure(latency=latency)
    task_id = earlier_task(apikley, sent_input)
    store = FakeStateStore(apikley_task=saved_task(task_id, sent_input, time.time() - 5))
    context = {"ti": mock.Mock(try_number=2), "task_state_store": store}
    with pytest.raises(TaskDeferred) as excinfo:
        edit(deferrable=True).execute(context)
    assert len(apikley.seen("createTask")) == 1  # the earlier try's
    assert excinfo.value.trigger.apikley_task_id == task_id
    assert pushed(context) == {"apikley_task_id": task_id}


def test_a_retry_finishes_a_task_that_already_succeeded(apikley, edit, sent_input):
    task_id = earlier_task(apikley, sent_input, ended=True)
    store = FakeStateStore(apikley_task=saved_task(task_id, sent_input, time.time() - 60))
    result = edit(deferrable=True).execute({"ti": mock.Mock(try_number=2), "task_state_store": store})
    creates = len(apikley.seen("createTask"))
    assert (result["apikley_task_id"], result["state"], creates) == (task_id, "success", 1)


def test_a_retry_submits_anew_when_the_earlier_task_failed(apikley, edit, sent_input):
    apikley.configure(fail_fraction=1.0)
    failed = earlier_task(apikley, sent_input, ended=True)
    apikley.configure(fail_fraction=0.0)
    store = FakeStateStore(apikley_task=saved_task(failed, sent_input, 1.0))
    result = edit().execute({"ti": mock.Mock(try_number=2), "task_state_store": store})
    assert task_ids(apikley) == [failed, result["apikley_task_id"]]
    assert result["state"] == "success"
    assert store["apikley_task"]["apikley_task_id"] == result["apikley_task_id"]


def test_resubmitting_a_failed_task_can_be_turned_off(apikley, edit, sent_input):
    apikley.configure(fail_fraction=1.0)
    failed = earlier_task(apikley, sent_input, ended=True)
    store = FakeStateStore(apikley_task=saved_task(failed, sent_input, 1.0))
    with pytest.raises(ApikleyTaskFailedError, match=f"{failed} failed: failCode=501"):
        edit(resubmit_failed_task=False).execute({"ti": mock.Mock(try_number=2), "task_state_store": store})
    assert len(apikley.seen("createTask")) == 1  # the earlier try's


def test_a_task_apikley_forgot_is_submitted_anew(apikley, edit, sent_input):
    store = FakeStateStore(apikley_task=saved_task(TASK_ID, sent_input, 1.0))
    result = edit().execute({"ti": mock.Mock(try_number=2), "task_state_store": store})
    (new_task_id,) = task_ids(apikley)
    assert result["apikley_task_id"] == new_task_id != TASK_ID
    assert apikley.seen("recordInfo")[0].query == f"taskId={TASK_ID}"


def test_a_404_page_that_is_not_apikleys_answer_is_never_taken_for_a_forgotten_task(apikley, edit, sent_input):
    from airflow_provider_qwen.emulator.script import html_page

    store = FakeStateStore(apikley_task=saved_task(TASK_ID, sent_input, 1.0))
    apikley.script("recordInfo", html_page(status=404))
    with pytest.raises(ApikleyNotFoundError):
        edit().execute({"ti": mock.Mock(try_number=2), "task_state_store": store})
    assert apikley.seen("createTask") == []  # nothing paid on a gateway's say-so


# ---- a retry takes over only the same request -----------------------------------------------------

#: A retry that waits on a worker, and one that waits in the triggerer and resumes on a worker.
WAYS = pytest.mark.parametrize("deferrable", [False, True], ids=["blocking", "deferrable"])


class WorkerLost(BaseException):
    """A try's worker dying: no ``except Exception`` of the operator's runs."""


def try_context(try_number: int, store: FakeStateStore) -> dict:
    return {"ti": mock.Mock(try_number=try_number), "task_state_store": store}


@pytest.fixture
def logged():
    """What the operators log while the test runs."""
    with capture_logs() as logs:
        yield logs


def warnings_in(logs: list[dict]) -> list[str]:
    return [entry["event"] for entry in logs if entry["log_level"] == "warning"]


async def first_event(trigger: ApikleyTaskTrigger) -> dict:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger fired no event")


def run_try(make, context) -> dict:
    """Run a try to its result: ``execute``; when it defers, its trigger and a fresh instance's ``execute_complete``."""
    try:
        return make().execute(context)
    except TaskDeferred as deferred:
        event = asyncio.run(first_event(deferred.trigger))
        return make().execute_complete(context, event)


def lost_while_waiting(make, store: FakeStateStore) -> str:
    """Try 1 submits and defers, and is lost before its trigger reports; return the task it paid for."""
    with pytest.raises(TaskDeferred):
        make(deferrable=True).execute(try_context(1, store))
    return store["apikley_task"]["apikley_task_id"]


@WAYS
def test_a_retry_whose_prompt_changed_submits_anew_and_reports_the_task_it_replaced(apikley, edit, logged, deferrable):
    store = FakeStateStore()
    red = lost_while_waiting(partial(edit, prompt="make it red"), store)
    result = run_try(partial(edit, prompt="make it BLUE", deferrable=deferrable), try_context(2, store))
    assert task_ids(apikley) == [red, result["apikley_task_id"]]
    blue = apikley.state.tasks[result["apikley_task_id"]]
    assert result["input"] == blue.request["input"]
    assert result["input"]["prompt"] == "make it BLUE"
    assert result["result_urls"] == blue.result_urls != []
    assert not set(result["result_urls"]) & set(apikley.wait_until_ended(red).result_urls)
    assert result["replaced_apikley_task_id"] == red
    assert store["apikley_task"]["apikley_task_id"] == blue.task_id
    assert any(
        f"Apikley task {red} was submitted by an earlier try for another request" in w for w in warnings_in(logged)
    )


@WAYS
def test_a_retry_with_the_same_input_resumes_without_creating_again(apikley, edit, deferrable):
    store = FakeStateStore()
    paid = lost_while_waiting(edit, store)
    result = run_try(partial(edit, deferrable=deferrable), try_context(2, store))
    assert (result["apikley_task_id"], result["state"]) == (paid, "success")
    assert len(apikley.seen("createTask")) == 1
    assert "replaced_apikley_task_id" not in result


def test_a_retry_that_replaced_a_task_waits_to_resume_on_a_worker_that_reports_it(apikley, edit):
    apikley.configure(latency=(60.0, 60.0, 60.0))  # every try finds its edit still running, however slow the machine
    store = FakeStateStore()
    red = lost_while_waiting(partial(edit, prompt="make it red"), store)
    with pytest.raises(TaskDeferred) as excinfo:
        edit(prompt="make it BLUE", deferrable=True).execute(try_context(2, store))
    trigger = excinfo.value.trigger
    assert (trigger.replaced_apikley_task_id, trigger.end_task_on_success) == (red, False)
    with pytest.raises(TaskDeferred) as excinfo:  # the same request again: nothing replaced, it may end there
        edit(prompt="make it BLUE", deferrable=True).execute(try_context(3, store))
    trigger = excinfo.value.trigger
    assert (trigger.replaced_apikley_task_id, trigger.end_task_on_success) == (None, True)


def test_without_waiting_the_result_names_the_task_it_replaced(apikley, edit):
    store = FakeStateStore()
    red = lost_while_waiting(partial(edit, prompt="make it red"), store)
    result = edit(prompt="make it BLUE", wait_for_completion=False).execute(try_context(2, store))
    assert result["replaced_apikley_task_id"] == red != result["apikley_task_id"]


def test_a_task_saved_before_requests_were_fingerprinted_is_replaced_not_resumed(apikley, edit, sent_input):
    earlier = earlier_task(apikley, sent_input, ended=True)
    store = FakeStateStore(apikley_task={"apikley_task_id": earlier, "submitted_at": time.time() - 60})
    result = edit().execute(try_context(2, store))
    assert task_ids(apikley) == [earlier, result["apikley_task_id"]]
    assert result["replaced_apikley_task_id"] == earlier
    assert all(request.query != f"taskId={earlier}" for request in apikley.seen("recordInfo"))


@pytest.fixture
def lost_once_apikley_created(monkeypatch):
    """The first ``createTask`` reaches Apikley, and its try is lost before the answer is saved."""
    real_create_task = ApikleyHook.create_task

    def create_task(self, *args, **kwargs):
        monkeypatch.setattr(ApikleyHook, "create_task", real_create_task)
        real_create_task(self, *args, **kwargs)
        raise WorkerLost

    monkeypatch.setattr(ApikleyHook, "create_task", create_task)


@WAYS
def test_a_try_lost_during_the_create_makes_the_retry_resubmit_saying_it_may_pay_twice(
    apikley, edit, logged, lost_once_apikley_created, deferrable
):
    store = FakeStateStore()
    before = time.time()
    with pytest.raises(WorkerLost):
        edit().execute(try_context(1, store))
    intent = store["apikley_task"]["intent"]
    assert "apikley_task_id" not in store["apikley_task"] and before <= intent["at"] <= time.time()
    result = run_try(partial(edit, deferrable=deferrable), try_context(2, store))
    assert apikley.state.accepted_creates == 2
    assert task_ids(apikley)[-1] == result["apikley_task_id"] == store["apikley_task"]["apikley_task_id"]
    began = datetime.fromtimestamp(intent["at"], UTC).isoformat(timespec="seconds")
    (warning,) = [w for w in warnings_in(logged) if "createTask" in w]
    assert f"began a paid createTask for this same request at {began}" in warning
    assert "this may pay a second time" in warning


def test_a_try_lost_during_the_create_fails_the_retry_before_any_request_when_told_to(
    apikley, edit, lost_once_apikley_created
):
    store = FakeStateStore()
    with pytest.raises(WorkerLost):
        edit(on_orphaned_intent="fail").execute(try_context(1, store))
    requests = len(apikley.seen())
    with pytest.raises(ApikleyOrphanedIntentError) as excinfo:
        edit(on_orphaned_intent="fail").execute(try_context(2, store))
    assert "saved no Apikley task id" in str(excinfo.value)
    assert "give its id to ApikleyTaskSensor; to submit anew, set on_orphaned_intent='resubmit'" in str(excinfo.value)
    assert (len(apikley.seen()), apikley.state.accepted_creates) == (requests, 1)


def test_a_create_apikley_refused_leaves_nothing_for_the_retry_to_fear(apikley, edit):
    store = FakeStateStore()
    apikley.state.credits = 0.0
    with pytest.raises(ApikleyInsufficientCreditsError):
        edit(on_orphaned_intent="fail").execute(try_context(1, store))
    assert store["apikley_task"] == {}
    apikley.state.credits = 100.0
    result = edit(on_orphaned_intent="fail").execute(try_context(2, store))
    assert (result["state"], apikley.state.accepted_creates) == ("success", 1)


@pytest.mark.parametrize(
    ("saved", "problem"),
    [
        ("3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e", "the value is not a JSON object"),
        ({"apikley_task_id": None, "submitted_at": 1.0}, "has neither an apikley_task_id nor an intent"),
        ({"apikley_task_id": "../../admin", "submitted_at": 1.0}, "apikley_task_id='../../admin' must be 1 to 128"),
        ({"apikley_task_id": TASK_ID, "submitted_at": "an hour ago"}, "submitted_at='an hour ago' is not epoch"),
        ({"intent": {"fingerprint": 1, "at": 1.0}}, "intent.fingerprint=1 is not a string"),
    ],
)
def test_an_entry_a_retry_cannot_read_fails_it_before_any_request(apikley, edit, saved, problem):
    store = FakeStateStore(apikley_task=saved)
    with pytest.raises(ApikleyUnreadableStateError) as excinfo:
        edit().execute(try_context(2, store))
    assert str(excinfo.value).startswith("Task state store key 'apikley_task': ")
    assert problem in str(excinfo.value)
    assert apikley.seen() == []


def test_an_unknown_orphaned_intent_policy_is_refused_before_any_request(apikley, edit):
    with pytest.raises(ApikleyInputError, match=r"^on_orphaned_intent='retry': must be one of resubmit, fail$"):
        edit(on_orphaned_intent="retry")
    assert apikley.seen() == []


@pytest.mark.parametrize(
    ("store", "advice"),
    [
        (FakeStateStore(), f"resumes Apikley task {TASK_ID} and waits for it again, without paying"),
        (None, "no task state store, so a retry submits and pays for a new task"),
    ],
)
def test_a_timeout_says_what_a_retry_will_do(context, store, advice):
    event = {"status": "timeout", "apikley_task_id": TASK_ID, "message": f"Apikley task {TASK_ID} did not finish"}
    with pytest.raises(ApikleyTaskTimeoutError, match=advice):
        make_operator().execute_complete({**context, "task_state_store": store}, event)


def test_execution_timeout_shortens_the_trigger_deadline(apikley, edit):
    from datetime import datetime, timedelta

    apikley.configure(latency=STAYS_QUEUING)
    ti = mock.Mock(start_date=datetime.now(UTC) - timedelta(seconds=30))
    operator = edit(deferrable=True, timeout=3600, execution_timeout=timedelta(seconds=60))
    with pytest.raises(TaskDeferred) as excinfo:
        operator.execute({"ti": ti})
    assert 25 <= excinfo.value.trigger.deadline - time.time() <= 31


def test_the_poll_error_budget_reaches_the_trigger(apikley, edit, context):
    apikley.configure(latency=STAYS_QUEUING)
    with pytest.raises(TaskDeferred) as excinfo:
        edit(deferrable=True, max_consecutive_poll_errors=25).execute(context)
    assert excinfo.value.trigger.max_consecutive_poll_errors == 25


# ---- checked before paying, explained after -------------------------------------------------------


def test_an_output_path_that_cannot_be_written_fails_before_paying(apikley, edit, context, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ApikleyInputError, match=r"output_path='file://.*/a-file/edits': must be a folder"):
        edit(output_path=f"file://{tmp_path}/a-file/edits").execute(context)
    assert apikley.seen() == []


@pytest.mark.parametrize(
    ("callback_url", "hint"),
    [("/apikley/callback", r"\[api\] base_url"), ("ftp://airflow.example.org/callback", "http:// or https://")],
)
def test_a_callback_url_apikley_cannot_reach_fails_before_paying(apikley, edit, context, callback_url, hint):
    with pytest.raises(ApikleyInputError, match=rf"callback_url='{re.escape(callback_url)}': .*{hint}"):
        edit(callback_url=callback_url).execute(context)
    assert apikley.seen() == []


def test_min_credits_refuses_to_submit_when_the_balance_is_short(apikley, edit, context):
    apikley.state.credits = 3.0
    with pytest.raises(ApikleyInsufficientCreditsError, match=r"min_credits=5: the account has 3 credits left"):
        edit(min_credits=5).execute(context)
    assert [request.endpoint for request in apikley.seen()] == ["credit"]


def test_min_credits_lets_a_task_the_account_can_pay_for_through(apikley, edit, context):
    apikley.configure(cost_per_task=2.5)
    result = edit(min_credits=2.5).execute(context)
    assert [request.endpoint for request in apikley.seen()][:2] == ["credit", "createTask"]
    assert result["credits_consumed"] == 2.5


def test_a_failed_copy_names_the_paid_task_its_results_and_what_a_retry_does(apikley, edit, tmp_path):
    store = FakeStateStore()
    apikley.script("results", envelope(code=404, msg="gone", status=404))  # the one result, once
    with pytest.raises(ApikleyError) as excinfo:
        edit(output_path=f"file://{tmp_path}/edits").execute({"ti": mock.Mock(try_number=1), "task_state_store": store})
    (task_id,) = task_ids(apikley)
    message = str(excinfo.value)
    assert f"Apikley task {task_id} succeeded" in message
    assert all(url in message for url in apikley.state.tasks[task_id].result_urls)
    assert f"resumes Apikley task {task_id} and copies its results again, without paying" in message

    result = edit(output_path=f"file://{tmp_path}/edits").execute(
        {"ti": mock.Mock(try_number=2), "task_state_store": store}
    )
    assert (result["apikley_task_id"], len(apikley.seen("createTask"))) == (task_id, 1)
    assert [item["uri"] for item in result["stored"]] == [f"file://{tmp_path}/edits/shoe.png"]


def test_a_wait_ended_by_connection_errors_says_what_to_check_and_what_a_retry_does(apikley, edit):
    apikley.script("recordInfo", dropped(times=None))
    with pytest.raises(ApikleyConnectionError) as excinfo:
        edit(max_consecutive_poll_errors=2).execute({"ti": mock.Mock(), "task_state_store": FakeStateStore()})
    (task_id,) = task_ids(apikley)
    assert f"resumes Apikley task {task_id} and waits for it again, without paying" in str(excinfo.value)
    assert "check the connection's host and proxies" in str(excinfo.value)


def test_a_trigger_error_event_gets_the_same_advice(context):
    event = {
        "status": "error",
        "apikley_task_id": TASK_ID,
        "message": "ApikleyConnectionError: Could not reach Apikley: Cannot connect to host",
    }
    with pytest.raises(ApikleyError, match=f"no task state store.*give {TASK_ID} to ApikleyTaskSensor.*host"):
        make_operator().execute_complete(context, event)


# ---- two steps: submit now, wait in a sensor ------------------------------------------------------


def test_without_waiting_the_output_path_is_handed_on_with_the_task(apikley, edit, context, tmp_path):
    result = edit(wait_for_completion=False, output_path=f"file://{tmp_path}/edits").execute(context)
    assert result["output_path"] == f"file://{tmp_path}/edits"


def test_an_output_path_nothing_would_receive_is_refused_before_paying(apikley, edit, context, tmp_path):
    with pytest.raises(ApikleyInputError, match=r"output_path=.*do_xcom_push=False pushes none"):
        edit(wait_for_completion=False, do_xcom_push=False, output_path=f"file://{tmp_path}").execute(context)
    assert apikley.seen() == []


@pytest.fixture
def missing_image_url(source_image_url) -> str:
    """An image the emulator does not have, on its own host: Apikley accepts the task, charges it, and fails it."""
    return source_image_url.replace("shoe.png", "no-such-shoe.png")


def test_a_failed_edit_apikley_charged_for_says_what_it_cost_when_waiting_on_the_worker(
    apikley, missing_image_url, context, logged
):
    before = apikley.state.credits
    with pytest.raises(ApikleyTaskFailedError) as excinfo:
        make_operator(image_url=missing_image_url).execute(context)
    charged = before - apikley.state.credits
    assert charged == apikley.state.settings.cost_per_task == 1
    assert excinfo.value.credits_consumed == charged
    assert str(excinfo.value).endswith("; 1 credits charged")
    errors = [entry["event"] for entry in logged if entry["log_level"] == "error"]
    assert any("failed" in line and "1 credits charged" in line for line in errors)


async def test_a_failed_edit_apikley_charged_for_says_what_it_cost_when_deferred(
    apikley, missing_image_url, context, logged
):
    before = apikley.state.credits
    with pytest.raises(TaskDeferred) as excinfo:
        make_operator(image_url=missing_image_url, deferrable=True).execute(context)
    event = await fire(excinfo.value.trigger)
    assert event["status"] == "failed"
    assert event["credits_consumed"] == before - apikley.state.credits == 1

    with pytest.raises(ApikleyTaskFailedError, match=r"; 1 credits charged$") as excinfo:
        make_operator(image_url=missing_image_url, deferrable=True).execute_complete(context, event)
    assert excinfo.value.credits_consumed == 1
    assert any("1 credits charged" in entry["event"] for entry in logged if entry["log_level"] == "error")
