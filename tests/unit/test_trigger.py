from __future__ import annotations

import asyncio
import gc
import json
import time

import aiohttp
import pytest

from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.hooks.retries import RetryPolicy
from airflow_provider_qwen.hooks.sessions import shared_sessions
from airflow_provider_qwen.models import TaskState
from airflow_provider_qwen.triggers.apikley import ApikleyTaskTrigger
from tests.conftest import API_KEY
from tests.unit.fixtures import RESULT_URL, TASK_ID, envelope, record
from tests.unit.scripted_server import ScriptedApikley


@pytest.fixture
async def http(monkeypatch):
    """A loopback server playing Apikley, and ``apikley_default`` pointing at it."""
    scripted = ScriptedApikley()
    server = await scripted.start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_APIKLEY_DEFAULT",
        json.dumps({"conn_type": "apikley", "host": scripted.base_url, "password": API_KEY}),
    )
    yield scripted
    await server.close()


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
    }


async def test_success_after_polling_yields_one_event_with_result_urls(http):
    for state in ("waiting", "queuing", "generating"):
        http.add(record(state))
    http.add(record("success"))
    events = await run_to_events(make_trigger())
    assert len(events) == 1
    assert events[0]["status"] == "success"
    assert events[0]["result_urls"] == [RESULT_URL]
    assert events[0]["apikley_task_id"] == TASK_ID
    assert http.count() == 4
    assert API_KEY not in json.dumps(events)


async def test_failed_generation_yields_failed_with_code_and_message(http):
    http.add(record("fail", fail_code="501", fail_msg="nsfw content"))
    (event,) = await run_to_events(make_trigger())
    assert (event["status"], event["fail_code"], event["fail_message"]) == ("failed", "501", "nsfw content")


async def test_deadline_yields_timeout_naming_the_task(http):
    http.add(record("generating"), repeat=True)
    started = time.monotonic()
    (event,) = await run_to_events(make_trigger(deadline=time.time() + 0.2, poll_interval=0.05))
    assert event["status"] == "timeout"
    assert TASK_ID in event["message"]
    assert "generating" in event["message"]
    assert time.monotonic() - started < 2


async def test_a_past_deadline_still_checks_once_so_a_finished_task_is_not_lost(http):
    http.add(record("success"))
    (event,) = await run_to_events(make_trigger(deadline=time.time() - 10))
    assert event["status"] == "success"


async def test_unknown_task_yields_error_at_once(http):
    http.add(envelope(None, code=422, msg="recordInfo is null"))
    (event,) = await run_to_events(make_trigger())
    assert event["status"] == "error"
    assert "recordInfo is null" in event["message"]
    assert http.count() == 1


async def test_wrong_key_yields_error_without_retrying_or_leaking(http):
    http.add(envelope(None, code=401, msg="bad key"), repeat=True)
    (event,) = await run_to_events(make_trigger())
    assert event["status"] == "error"
    assert API_KEY not in event["message"]
    assert http.count() == 1


async def test_transient_errors_while_polling_are_retried(http):
    http.add(envelope(None, code=429))
    http.add(status=502, body="<html>Bad Gateway</html>")
    http.add(drop=True)
    http.add(record("queuing"), delay=1.0)  # longer than the hook's timeout
    http.add(envelope(None, code=455))
    http.add(record("success"))
    hook = ApikleyHook(retry_policy=RetryPolicy(attempts=10), timeout=0.3)
    assert (await hook.aget_task(TASK_ID)).state is TaskState.SUCCESS
    await hook.aclose()
    assert http.count() == 6


async def test_async_hook_sends_bearer_and_user_agent_and_reuses_one_session(http):
    http.add(record("waiting"), repeat=True)
    hook = ApikleyHook()
    await hook.aget_task(TASK_ID)
    session = hook._aio_session
    await hook.aget_task(TASK_ID)
    assert hook._aio_session is session
    headers = http.requests[0][2]
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert headers["User-Agent"].startswith("airflow-provider-qwen/")
    await hook.aclose()
    assert session.closed


async def test_hooks_of_one_connection_share_a_session_the_last_one_closes(http):
    http.add(record("waiting"), repeat=True)
    first, second = ApikleyHook(), ApikleyHook()
    await first.aget_task(TASK_ID)
    await second.aget_task(TASK_ID)
    session = first._aio_session
    assert second._aio_session is session
    assert shared_sessions.borrowers("apikley_default") == 2
    await first.aclose()
    assert not session.closed
    await second.aclose()
    assert session.closed
    assert shared_sessions.borrowers("apikley_default") == 0


async def test_a_shared_session_carries_each_hooks_own_key(http, monkeypatch):
    http.add(record("waiting"), repeat=True)
    before = ApikleyHook()
    await before.aget_task(TASK_ID)
    rotated = "sk-rotated-0000"
    monkeypatch.setenv(
        "AIRFLOW_CONN_APIKLEY_DEFAULT",
        json.dumps({"conn_type": "apikley", "host": http.base_url, "password": rotated}),
    )
    after = ApikleyHook()
    await after.aget_task(TASK_ID)
    assert after._aio_session is before._aio_session
    assert [headers["Authorization"] for _, _, headers in http.requests] == [f"Bearer {API_KEY}", f"Bearer {rotated}"]
    await before.aclose()
    await after.aclose()


async def test_many_concurrent_triggers_share_one_open_session_and_close_it(http, monkeypatch):
    http.add(record("success"), repeat=True)
    opened = []
    original_init = aiohttp.ClientSession.__init__

    def counting_init(self, *args, **kwargs):
        # A trigger that ends before a slow one borrows may close the session first; what must never
        # happen is two sessions open at once.
        assert all(session.closed for session in opened), "a second session opened beside an open one"
        opened.append(self)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "__init__", counting_init)
    runs = await asyncio.gather(*(run_to_events(make_trigger()) for _ in range(100)))
    assert [event["status"] for (event,) in runs] == ["success"] * 100
    assert 1 <= len(opened) < 100
    assert all(session.closed for session in opened)


async def test_trigger_never_creates_a_task(http):
    http.add(record("generating"))
    http.add(record("success"))
    await run_to_events(make_trigger())
    assert [method for method, _, _ in http.requests] == ["GET", "GET"]
    assert all(path.startswith("/api/v1/jobs/recordInfo?taskId=") for _, path, _ in http.requests)


async def test_trigger_never_looks_up_the_connection_on_the_event_loop(http, monkeypatch):
    http.add(record("success"))
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
    (event,) = await run_to_events(make_trigger())
    assert event["status"] == "success"
    assert lookups_on_the_loop == []


async def test_the_trigger_rides_out_a_run_of_transient_failures(http):
    for answer in (
        {"payload": envelope(None, code=500)},
        {"status": 502, "body": "<html>Bad Gateway</html>"},
        {"drop": True},
        {"payload": envelope(None, code=455)},
        {"payload": envelope(None, code=429)},
    ):
        http.add(**answer)
    http.add(record("success"))
    (event,) = await run_to_events(make_trigger(max_consecutive_poll_errors=6))
    assert event["status"] == "success"
    assert http.count() == 6


async def test_too_many_failures_in_a_row_end_the_wait_with_the_last_error(http):
    http.add(record("generating"))
    http.add(envelope(None, code=500, msg="first"))
    http.add(envelope(None, code=500, msg="second"))
    http.add(envelope(None, code=455, msg="last one"))
    (event,) = await run_to_events(make_trigger(max_consecutive_poll_errors=3))
    assert event["status"] == "error"
    assert "last one" in event["message"]
    assert http.count() == 4


async def test_a_success_resets_the_failure_count(http):
    for _ in range(3):
        http.add(envelope(None, code=500))
        http.add(record("generating"))
    http.add(record("success"))
    (event,) = await run_to_events(make_trigger(max_consecutive_poll_errors=2))
    assert event["status"] == "success"


async def test_failures_past_the_deadline_end_in_timeout(http):
    http.add(envelope(None, code=500), repeat=True)
    (event,) = await run_to_events(make_trigger(deadline=time.time() + 0.2, max_consecutive_poll_errors=1000))
    assert event["status"] == "timeout"


async def test_a_huge_answer_ends_the_wait_with_a_clear_error(http):
    http.add(status=200, body="x" * (2 * 1024 * 1024), repeat=True)
    (event,) = await run_to_events(make_trigger(max_consecutive_poll_errors=2))
    assert event["status"] == "error"
    assert "larger than 1048576 bytes" in event["message"]


async def test_polls_leave_no_reference_cycles_for_the_garbage_collector(http):
    # A triggerer runs thousands of these: garbage that only the collector can free costs pauses of
    # the whole event loop, growing with the number of triggers.
    async def cyclic_garbage_of_a_wait(polls: int) -> int:
        for _ in range(polls - 1):
            http.add(record("generating"))
        http.add(record("success"))
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
