from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
from types import SimpleNamespace

import aiohttp
import pytest

from airflow.triggers.base import TaskSuccessEvent

from airflow_provider_qwen.api_server.urls import task_page_url
from airflow_provider_qwen.emulator.script import ScriptedAnswer, dropped, envelope, html_page, task_record
from airflow_provider_qwen.exceptions import ApikleyConfigurationError
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.hooks.retries import RetryPolicy
from airflow_provider_qwen.hooks.sessions import shared_sessions
from airflow_provider_qwen.models import TaskState
from airflow_provider_qwen.triggers.apikley import RESUME_SETTLE_SECONDS, ApikleyTaskTrigger
from airflow_provider_qwen.waits import ExpectedDurations
from tests.conftest import API_KEY, recording_xcom_set, submit_edit

#: A task the emulator never created: what it answers about it is scripted, or "recordInfo is null".
TASK_ID = "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e"
MODEL = "qwen/image-to-image"


def finished(apikley, task_id: str) -> str:
    """``task_id``, once the emulator has ended it."""
    apikley.wait_until_ended(task_id)
    return task_id


@pytest.fixture
def running_task(apikley, source_image_url) -> str:
    """A real edit the emulator has just accepted."""
    return submit_edit(source_image_url)


@pytest.fixture
def finished_task(apikley, source_image_url) -> str:
    """A real edit the emulator has made; made at once (no latency), as the test waits for nothing but it."""
    apikley.configure(latency=(0.0, 0.0, 0.0))
    return finished(apikley, submit_edit(source_image_url))


def record(state: str, task_id: str = TASK_ID, **options) -> ScriptedAnswer:
    """A recordInfo answer for ``task_id`` in ``state``; ``options`` as for :class:`ScriptedAnswer`."""
    return envelope(task_record(task_id, state), **options)


def polls_seen(apikley) -> int:
    """Status queries the emulator received."""
    return len(apikley.seen("recordInfo"))


def make_trigger(**overrides) -> ApikleyTaskTrigger:
    return ApikleyTaskTrigger(
        **{"apikley_task_id": TASK_ID, "deadline": time.time() + 60, "poll_interval": 0.01, **overrides}
    )


async def run_to_events(trigger: ApikleyTaskTrigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]


def test_serialize_round_trips_through_json_and_holds_no_key():
    trigger = make_trigger(apikley_conn_id="my_apikley")
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_qwen.triggers.apikley.ApikleyTaskTrigger"
    dumped = json.dumps(kwargs)
    assert API_KEY not in dumped
    rebuilt = ApikleyTaskTrigger(**json.loads(dumped))
    assert rebuilt.serialize() == (classpath, kwargs)
    assert set(kwargs) == {
        "apikley_task_id",
        "apikley_conn_id",
        "deadline",
        "poll_interval",
        "submitted_at",
        "max_consecutive_poll_errors",
        "with_input",
        "model",
        "expected_duration",
        "end_task_on_success",
        "maps_over_result",
        "output_path",
        "replaced_apikley_task_id",
        "deferred_at",
        "result_name",
        "awaits_callback",
    }


async def test_success_after_polling_yields_one_event_with_result_urls(apikley, finished_task):
    apikley.script("recordInfo", *(record(state, finished_task) for state in ("waiting", "queuing", "generating")))
    events = await run_to_events(make_trigger(apikley_task_id=finished_task))
    assert len(events) == 1
    assert events[0]["status"] == "success"
    assert events[0]["result_urls"] == apikley.state.tasks[finished_task].result_urls
    assert events[0]["result_urls"]
    assert events[0]["apikley_task_id"] == finished_task
    assert polls_seen(apikley) == 4  # the three running states, then the emulator's own success
    assert API_KEY not in json.dumps(events)


async def test_failed_generation_yields_failed_with_code_and_message(apikley, source_image_url):
    apikley.configure(fail_fraction=1.0)
    task_id = submit_edit(source_image_url)
    (event,) = await run_to_events(make_trigger(apikley_task_id=task_id))
    failed = apikley.state.tasks[task_id]
    assert (event["status"], event["fail_code"], event["fail_message"]) == ("failed", "501", failed.fail_message)
    assert failed.fail_message


async def test_deadline_yields_timeout_naming_the_task(apikley, source_image_url):
    apikley.configure(latency=(0.0, 0.0, 30.0))  # still generating long after the deadline
    task_id = submit_edit(source_image_url)
    (event,) = await run_to_events(
        make_trigger(apikley_task_id=task_id, deadline=time.time() + 0.2, poll_interval=0.05)
    )
    assert event["status"] == "timeout"
    assert task_id in event["message"]
    assert "generating" in event["message"]
    # it gave up at the deadline, not when the task ended: the task is still generating now
    assert apikley.state.tasks[task_id].record(time.time())["state"] == "generating"


async def test_a_past_deadline_still_checks_once_so_a_finished_task_is_not_lost(finished_task):
    (event,) = await run_to_events(make_trigger(apikley_task_id=finished_task, deadline=time.time() - 10))
    assert event["status"] == "success"


async def test_unknown_task_yields_error_at_once(apikley):
    (event,) = await run_to_events(make_trigger())
    assert event["status"] == "error"
    assert f"Apikley does not know task {TASK_ID}" in event["message"]
    assert polls_seen(apikley) == 1


async def test_wrong_key_yields_error_without_retrying_or_leaking(apikley):
    apikley.configure(api_keys=["sk-another-account"])  # the connection's key is refused with code 401
    (event,) = await run_to_events(make_trigger())
    assert event["status"] == "error"
    assert API_KEY not in event["message"]
    assert polls_seen(apikley) == 1


async def test_transient_errors_while_polling_are_retried(apikley, finished_task):
    apikley.script(
        "recordInfo",
        envelope(code=429),
        html_page(status=502),
        dropped(),
        record("queuing", finished_task, delay=1.0),  # longer than the hook's timeout
        envelope(code=455),
    )
    hook = ApikleyHook(retry_policy=RetryPolicy(attempts=10), timeout=0.3)
    assert (await hook.aget_task(finished_task)).state is TaskState.SUCCESS
    await hook.aclose()
    assert polls_seen(apikley) == 6


async def test_async_hook_sends_bearer_and_user_agent_and_reuses_one_session(apikley, running_task):
    hook = ApikleyHook()
    await hook.aget_task(running_task)
    session = hook._aio_session
    await hook.aget_task(running_task)
    assert hook._aio_session is session
    headers = apikley.seen("recordInfo")[0].headers
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert headers["user-agent"].startswith("airflow-provider-qwen/")
    await hook.aclose()
    assert session.closed


async def test_hooks_of_one_connection_share_a_session_the_last_one_closes(running_task):
    first, second = ApikleyHook(), ApikleyHook()
    await first.aget_task(running_task)
    await second.aget_task(running_task)
    session = first._aio_session
    assert second._aio_session is session
    assert shared_sessions.borrowers("apikley_default") == 2
    await first.aclose()
    assert not session.closed
    await second.aclose()
    assert session.closed
    assert shared_sessions.borrowers("apikley_default") == 0


async def test_a_shared_session_carries_each_hooks_own_key(apikley, running_task, monkeypatch):
    rotated = "sk-rotated-0000"
    apikley.configure(api_keys=[API_KEY, rotated])  # the account's old and new key, mid-rotation
    before = ApikleyHook()
    await before.aget_task(running_task)
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", apikley.airflow_connection(api_key=rotated))
    after = ApikleyHook()
    await after.aget_task(running_task)
    assert after._aio_session is before._aio_session
    sent = [request.headers["authorization"] for request in apikley.seen("recordInfo")]
    assert sent == [f"Bearer {API_KEY}", f"Bearer {rotated}"]
    await before.aclose()
    await after.aclose()


async def test_many_concurrent_triggers_share_one_open_session_and_close_it(finished_task, monkeypatch):
    opened = []
    original_init = aiohttp.ClientSession.__init__

    def counting_init(self, *args, **kwargs):
        # A trigger that ends before a slow one borrows may close the session first; what must never
        # happen is two sessions open at once.
        assert all(session.closed for session in opened), "a second session opened beside an open one"
        opened.append(self)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "__init__", counting_init)
    runs = await asyncio.gather(*(run_to_events(make_trigger(apikley_task_id=finished_task)) for _ in range(100)))
    assert [event["status"] for (event,) in runs] == ["success"] * 100
    assert 1 <= len(opened) < 100
    assert all(session.closed for session in opened)


async def test_trigger_never_creates_a_task(apikley):
    apikley.script("recordInfo", record("generating"), record("success"))
    await run_to_events(make_trigger())
    sent = apikley.seen()
    assert [(request.method, request.path) for request in sent] == [("GET", "/api/v1/jobs/recordInfo")] * 2
    assert all(request.query == f"taskId={TASK_ID}" for request in sent)


async def test_trigger_never_looks_up_the_connection_on_the_event_loop(finished_task, monkeypatch):
    original = ApikleyHook.get_connection.__func__
    lookups_on_the_loop = []

    def watched(cls, conn_id):
        # Older Airflow resolves it synchronously in a worker thread, which is fine; on the loop it is not.
        try:
            asyncio.get_running_loop()
            lookups_on_the_loop.append(conn_id)
        except RuntimeError:
            pass
        return original(cls, conn_id)

    monkeypatch.setattr(ApikleyHook, "get_connection", classmethod(watched))
    (event,) = await run_to_events(make_trigger(apikley_task_id=finished_task))
    assert event["status"] == "success"
    assert lookups_on_the_loop == []


async def test_the_connections_webhook_secret_is_masked_off_the_event_loop(apikley, finished_task, monkeypatch):
    """
    A triggerer's masking is a blocking send to its supervisor, served by the trigger's event loop:
    sent from that loop, it hangs every trigger of the triggerer on Airflow 3.2.
    """
    from airflow_provider_qwen.hooks import connection

    secret = "webhook-secret-of-this-test"
    conn = json.loads(apikley.airflow_connection())
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", json.dumps({**conn, "extra": {"webhook_secret": secret}}))
    masked: list[tuple[str, bool]] = []

    def watched(value, *args, **kwargs):
        try:
            asyncio.get_running_loop()
            masked.append((value, True))
        except RuntimeError:
            masked.append((value, False))

    monkeypatch.setattr(connection, "mask_secret", watched)
    (event,) = await run_to_events(make_trigger(apikley_task_id=finished_task))
    assert event["status"] == "success"
    assert (secret, False) in masked, "the secret was not masked"
    assert [value for value, on_the_loop in masked if on_the_loop] == []


async def test_the_trigger_rides_out_a_run_of_transient_failures(apikley, finished_task):
    apikley.script(
        "recordInfo",
        envelope(code=500),
        html_page(status=502),
        dropped(),
        envelope(code=455),
        envelope(code=429),
    )
    (event,) = await run_to_events(make_trigger(apikley_task_id=finished_task, max_consecutive_poll_errors=6))
    assert event["status"] == "success"
    assert polls_seen(apikley) == 6


async def test_too_many_failures_in_a_row_end_the_wait_with_the_last_error(apikley):
    apikley.script(
        "recordInfo",
        record("generating"),
        envelope(code=500, msg="first"),
        envelope(code=500, msg="second"),
        envelope(code=455, msg="last one"),
    )
    (event,) = await run_to_events(make_trigger(max_consecutive_poll_errors=3))
    assert event["status"] == "error"
    assert "last one" in event["message"]
    assert polls_seen(apikley) == 4


async def test_a_success_resets_the_failure_count(apikley, finished_task):
    apikley.script("recordInfo", *(envelope(code=500), record("generating", finished_task)) * 3)
    (event,) = await run_to_events(make_trigger(apikley_task_id=finished_task, max_consecutive_poll_errors=2))
    assert event["status"] == "success"


async def test_failures_past_the_deadline_end_in_timeout(apikley):
    apikley.script("recordInfo", envelope(code=500, times=None))
    (event,) = await run_to_events(make_trigger(deadline=time.time() + 0.2, max_consecutive_poll_errors=1000))
    assert event["status"] == "timeout"


async def test_a_huge_answer_ends_the_wait_with_a_clear_error(apikley):
    apikley.script("recordInfo", ScriptedAnswer(b"x" * (2 * 1024 * 1024), times=None))
    (event,) = await run_to_events(make_trigger(max_consecutive_poll_errors=2))
    assert event["status"] == "error"
    assert "larger than 1048576 bytes" in event["message"]


async def test_polls_leave_no_reference_cycles_for_the_garbage_collector(apikley):
    # A triggerer runs thousands of these: garbage that only the collector can free costs pauses of
    # the whole event loop, growing with the number of triggers.
    async def cyclic_garbage_of_a_wait(polls: int) -> int:
        apikley.script("recordInfo", record("generating", times=polls - 1), record("success"))
        gc.collect()
        gc.disable()
        try:
            (event,) = await run_to_events(make_trigger(poll_interval=0))
            assert event["status"] == "success"
            return gc.collect()
        finally:
            gc.enable()

    await cyclic_garbage_of_a_wait(5)  # what the first wait loads and caches is not counted
    short, long = await cyclic_garbage_of_a_wait(5), await cyclic_garbage_of_a_wait(105)
    assert long - short < 100, f"100 more polls left {long - short} objects in reference cycles"


async def test_the_first_query_waits_for_the_expected_duration(apikley, finished_task):
    submitted_at = time.time()
    (event,) = await run_to_events(
        make_trigger(apikley_task_id=finished_task, submitted_at=submitted_at, expected_duration=0.3)
    )
    assert event["status"] == "success"
    (first, *_) = apikley.seen("recordInfo")
    assert first.at >= submitted_at + 0.3


def recorded_sleeps(monkeypatch: pytest.MonkeyPatch, *, really: bool = True) -> list[float]:
    """The seconds each ``asyncio.sleep`` in this thread asks for (not the emulator's, in a thread of its own)."""
    slept: list[float] = []
    real_sleep, this_thread = asyncio.sleep, threading.get_ident()

    async def recorded_sleep(seconds: float, *args) -> None:
        if threading.get_ident() == this_thread:
            slept.append(seconds)
            seconds = seconds if really else 0
        await real_sleep(seconds, *args)

    monkeypatch.setattr(asyncio, "sleep", recorded_sleep)
    return slept


async def test_a_restarted_trigger_does_not_wait_for_the_expected_duration_again(apikley, finished_task, monkeypatch):
    slept = recorded_sleeps(monkeypatch)
    trigger = make_trigger(apikley_task_id=finished_task, submitted_at=time.time() - 60, expected_duration=30)
    (event,) = await run_to_events(trigger)
    assert event["status"] == "success"
    assert slept[0] == 0  # asked at once: the expected 30 s had passed before the restart


@pytest.mark.parametrize(
    ("submitted_seconds_ago", "deferred_seconds_ago"),
    [(0, 0), (60, 60), (3600, 0), (0, None)],
    ids=["just-deferred", "taken-over-later", "a-retry-resuming-an-old-task", "deferred-by-an-older-provider"],
)
async def test_an_event_that_resumes_a_worker_waits_for_the_scheduler_to_see_the_deferral(
    finished_task, monkeypatch, submitted_seconds_ago, deferred_seconds_ago
):
    slept = recorded_sleeps(monkeypatch, really=False)
    now = time.time()
    trigger = make_trigger(
        apikley_task_id=finished_task,
        submitted_at=now - submitted_seconds_ago,
        deferred_at=None if deferred_seconds_ago is None else now - deferred_seconds_ago,
        expected_duration=0,
    )
    trigger.task_instance = SimpleNamespace(dag_id="d", task_id="t", run_id="manual__1", map_index=-1)
    (event,) = await run_to_events(trigger)
    assert event["status"] == "success"
    settle = [seconds for seconds in slept if seconds > 0]
    if deferred_seconds_ago:  # a trigger that took over long after the deferral sends at once
        assert settle == []
    else:  # sent no sooner than RESUME_SETTLE_SECONDS after the deferral, however old the task
        assert len(settle) == 1 and RESUME_SETTLE_SECONDS - 2 < settle[0] <= RESUME_SETTLE_SECONDS


async def test_the_settle_time_is_configurable(finished_task, monkeypatch):
    monkeypatch.setenv("AIRFLOW__APIKLEY__RESUME_SETTLE_SECONDS", "0")
    slept = recorded_sleeps(monkeypatch, really=False)
    trigger = make_trigger(apikley_task_id=finished_task, deferred_at=time.time(), expected_duration=0)
    trigger.task_instance = SimpleNamespace(dag_id="d", task_id="t", run_id="manual__1", map_index=-1)
    (event,) = await run_to_events(trigger)
    assert event["status"] == "success"
    assert [seconds for seconds in slept if seconds > 0] == []


async def test_a_bad_settle_time_fails_the_trigger_before_it_waits(apikley, monkeypatch):
    monkeypatch.setenv("AIRFLOW__APIKLEY__RESUME_SETTLE_SECONDS", "ten")
    with pytest.raises(ApikleyConfigurationError, match=r"\[apikley\] resume_settle_seconds \(a text, not shown\)"):
        await run_to_events(make_trigger(deferred_at=time.time()))
    assert polls_seen(apikley) == 0


async def test_an_event_that_resumes_a_worker_carries_the_output_path_back(apikley, finished_task):
    trigger = make_trigger(apikley_task_id=finished_task, output_path="file:///data/edits")
    (event,) = await run_to_events(trigger)
    assert (event["status"], event["output_path"]) == ("success", "file:///data/edits")


async def test_the_trigger_learns_how_long_tasks_take(apikley, finished_task, monkeypatch):
    learned = ExpectedDurations(minimum_samples=1, percentile=1.0)
    monkeypatch.setattr("airflow_provider_qwen.waits.EXPECTED_DURATIONS", learned)
    await run_to_events(make_trigger(apikley_task_id=finished_task, model=MODEL))
    record = apikley.state.tasks[finished_task].record(time.time())
    assert learned.expected("apikley_default", MODEL) == (record["completeTime"] - record["createTime"]) / 1000


class TriggerTaskInstance:
    """What the triggerer hands a trigger about the task it waits for."""

    dag_id, task_id, run_id, map_index = "edits", "edit", "manual__1", 3


@pytest.fixture
def pushed(monkeypatch) -> list[dict]:
    """The XComs the trigger pushes through the Task SDK, as the triggerer would forward them."""
    calls: list[dict] = []
    monkeypatch.setattr("airflow.sdk.execution_time.xcom.XCom.set", recording_xcom_set(calls))
    return calls


@pytest.mark.parametrize(("maps_over_result", "mapped_length"), [(False, None), (True, 5)])
async def test_a_success_ends_the_task_from_the_triggerer_with_its_result_pushed(
    apikley, finished_task, pushed, maps_over_result, mapped_length
):
    trigger = make_trigger(apikley_task_id=finished_task, end_task_on_success=True, maps_over_result=maps_over_result)
    trigger.task_instance = TriggerTaskInstance()
    events = [event async for event in trigger.run()]
    assert [type(event) for event in events] == [TaskSuccessEvent]
    push, link = pushed
    task = apikley.state.tasks[finished_task]
    assert push["value"] == {
        "apikley_task_id": finished_task,
        "state": "success",
        "result_urls": task.result_urls,
        "input": task.request["input"],
        "credits_consumed": 1.0,
    }
    assert (push["key"], push["task_id"], push["run_id"], push["map_index"]) == ("return_value", "edit", "manual__1", 3)
    assert push["_mapped_length"] == mapped_length
    # the extra link, which a worker would push when it ends the task
    assert (link["key"], link["value"]) == ("_link_ApikleyTaskLink", task_page_url("apikley_default", finished_task))
    assert (link["task_id"], link["run_id"], link["map_index"]) == ("edit", "manual__1", 3)


async def test_a_failure_resumes_the_task_on_a_worker_even_when_success_would_not(apikley, source_image_url, pushed):
    apikley.configure(fail_fraction=1.0, latency=(0.0, 0.0, 0.0))
    trigger = make_trigger(apikley_task_id=finished(apikley, submit_edit(source_image_url)), end_task_on_success=True)
    trigger.task_instance = TriggerTaskInstance()
    (event,) = [event async for event in trigger.run()]
    assert not isinstance(event, TaskSuccessEvent) and event.payload["status"] == "failed"
    assert pushed == []


async def test_without_a_task_instance_or_an_xcom_api_the_worker_resumes_instead(apikley, finished_task, monkeypatch):
    trigger = make_trigger(apikley_task_id=finished_task, end_task_on_success=True)
    (event,) = [event async for event in trigger.run()]  # no task instance, as under ``dag.test()``
    assert not isinstance(event, TaskSuccessEvent) and event.payload["status"] == "success"

    refuse = recording_xcom_set([], error=ConnectionError("the triggerer's supervisor went away"))
    monkeypatch.setattr("airflow.sdk.execution_time.xcom.XCom.set", refuse)
    trigger = make_trigger(apikley_task_id=finished_task, end_task_on_success=True)
    trigger.task_instance = TriggerTaskInstance()
    (event,) = [event async for event in trigger.run()]
    assert not isinstance(event, TaskSuccessEvent) and event.payload["status"] == "success"


async def test_queries_started_together_borrow_the_shared_session_once(apikley, running_task):
    hook = ApikleyHook()
    await asyncio.gather(*(hook.aget_task(running_task) for _ in range(3)))
    assert shared_sessions.borrowers("apikley_default") == 1
    await hook.aclose()
    assert shared_sessions.borrowers("apikley_default") == 0


async def test_a_success_with_an_output_path_is_stored_from_the_triggerer(apikley, finished_task, pushed, tmp_path):
    trigger = make_trigger(apikley_task_id=finished_task, end_task_on_success=True, output_path=f"file://{tmp_path}")
    trigger.task_instance = TriggerTaskInstance()
    (event,) = [event async for event in trigger.run()]
    assert isinstance(event, TaskSuccessEvent)
    ((stored,),) = [push["value"]["stored"] for push in pushed if push["key"] == "return_value"]
    written = tmp_path / f"{finished_task}-0.png"
    assert stored["uri"].endswith(written.name) and stored["size"] == written.stat().st_size > 0


async def test_results_that_cannot_be_stored_from_the_triggerer_are_left_to_a_worker(apikley, finished_task, pushed):
    trigger = make_trigger(apikley_task_id=finished_task, end_task_on_success=True, output_path="file:///proc/nope")
    trigger.task_instance = TriggerTaskInstance()
    (event,) = [event async for event in trigger.run()]
    assert not isinstance(event, TaskSuccessEvent) and event.payload["status"] == "success"
    assert pushed == []
