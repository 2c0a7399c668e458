"""
The provider on a real deployment: separate scheduler, dag-processor, triggerer and api-server
processes on PostgreSQL, against the emulator running as a process of its own.

The system tests share one deployment and run in order; each counts only the createTask calls its
own run made. They run on every supported Airflow line; where a retry follows a killed worker, what
it pays depends on the line: Airflow 3.3's task state store lets it resume the Apikley task an
earlier try submitted, and before 3.3 it submits anew by design.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest

from tests.conftest import has_task_state_store
from tests.system.conftest import MEASUREMENTS_SECTION, PARALLELISM
from tests.system.deployment import AirflowDeployment, EmulatorProcess
from tests.system.waiting import StopWaiting, wait_for

pytestmark = [pytest.mark.system, pytest.mark.slow]

DAG_ID = "qwen_system_edits"
#: Mapped edits through the triggerer crash: 40 in ``make test``, 200 in ``make system-test``, whose
#: wall time docs/benchmarks.md quotes.
EDITS = int(os.environ.get("QWEN_SYSTEM_EDITS", "40"))
MIDWAY_TIMEOUT_SECONDS = 450.0
TAKEOVER_TIMEOUT_SECONDS = 120.0
RUN_TIMEOUT_SECONDS = 720.0
#: 1.3 times the time the creates take at an account's 20 per 10 s.
WALL_TARGET_SECONDS = 1.3 * EDITS / 2

#: Triggers the triggerer should be waiting on when it is killed, if the run gets there in time.
BUSY_TRIGGERER = 10
SUBMIT_TIMEOUT_SECONDS = 180.0

#: Holds the first status query after createTask for longer than the test needs to find and kill the task.
SLOW_SECONDS = 30
SLOW_RECORD_INFO = {"recordInfo": {"slow": 1.0, "slow_seconds": SLOW_SECONDS}}


def accepted_creates(emulator: EmulatorProcess) -> int:
    return emulator.stats()["accepted_create_tasks"]


def batch_ids_saved(deployment: AirflowDeployment, run_id: str) -> int:
    """How many Apikley task ids a retry would find in the batch's ledger in the task state store."""
    from airflow_provider_qwen.batch_ledger import BatchLedger

    keys = deployment.sql(
        "SELECT key, value FROM task_state_store WHERE dag_id = %s AND run_id = %s AND task_id = 'batch' "
        "AND key LIKE 'apikley_batch/%%'",
        (BATCH_DAG_ID, run_id),
    )
    store = StoreCopy({key: json.loads(value) for key, value in keys})
    # pages, their continuations, and the created slots of the burst being sent; an entry without
    # a task id is an intent: a create begun, not yet answered
    return sum(1 for entry in BatchLedger(store).load(BATCH_EDITS).values() if entry.apikley_task_id)


class StoreCopy(dict):
    """A copy of a task state store's keys, read as the operator reads them (a load may write to it)."""

    def set(self, key: str, value: object) -> None:
        self[key] = value


def stop_between_creates(worker: psutil.Process, saved: Callable[[], int], accepted: Callable[[], int]) -> None:
    """
    Stop ``worker`` at a moment when every create Apikley accepted has its id saved, and leave it stopped.

    Apikley has no idempotency key: a worker killed in the milliseconds between a create's answer and
    the id's save pays for that edit again on retry, and nothing can tell. The test kills outside that
    window, to show what it is about: everything saved is resumed, and nothing else is paid twice.
    """
    for _ in range(100):
        worker.suspend()
        time.sleep(0.5)  # a create already sent, and its id's save, land meanwhile
        if accepted() == saved():
            return
        worker.resume()
        time.sleep(0.05)
    raise AssertionError("no moment with every accepted create saved in 100 tries")


def edit_states(deployment: AirflowDeployment, run_id: str) -> Counter[str]:
    rows = deployment.sql(
        "SELECT state, count(*) FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = 'edit' "
        "GROUP BY state",
        (DAG_ID, run_id),
    )
    return Counter({state or "none": count for state, count in rows})


def edit_results(deployment: AirflowDeployment, run_id: str) -> list[dict[str, Any]]:
    """Each edit's return value (its XCom), by map index."""
    rows = deployment.sql(
        "SELECT value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = 'edit' AND key = 'return_value' "
        "ORDER BY map_index",
        (DAG_ID, run_id),
    )
    return [value for (value,) in rows]


def assert_results_stored(results: list[dict[str, Any]], names: list[str]) -> None:
    """
    Each result names one stored file, which exists and has the size and sha256 the result says.

    :param names: each result's file name, in order: the source's, with the map or batch index.
    """
    assert [Path(urlsplit(stored["uri"]).path).name for result in results for stored in result["stored"]] == names
    for result in results:
        (stored,) = result["stored"]
        path = Path(urlsplit(stored["uri"]).path)
        content = path.read_bytes()
        assert len(content) == stored["size"] > 0
        assert hashlib.sha256(content).hexdigest() == stored["sha256"]


def running_triggerer_job(deployment: AirflowDeployment) -> int:
    ((job_id,),) = deployment.sql(
        "SELECT id FROM job WHERE job_type = 'TriggererJob' AND state = 'running' "
        "ORDER BY latest_heartbeat DESC LIMIT 1"
    )
    return job_id


def triggers_held_by(deployment: AirflowDeployment, triggerer_job_id: int) -> int:
    ((count,),) = deployment.sql("SELECT count(*) FROM trigger WHERE triggerer_id = %s", (triggerer_job_id,))
    return count


@dataclass
class TriggererCrash:
    """What the triggerer held when it was killed, and how long until a new one took it over."""

    orphaned_triggers: int
    edit_states: Counter[str]
    most_deferred: int
    takeover_seconds: float


def crash_triggerer_midway(
    deployment: AirflowDeployment, emulator: EmulatorProcess, run_id: str, creates_before: int
) -> TriggererCrash:
    """
    Midway, SIGKILL the triggerer (and its trigger runner) and start a new one; return when the new
    one has taken over every trigger.

    Midway is once half the edits are submitted (each defers right after), at the first moment the
    triggerer waits for ``BUSY_TRIGGERER`` of them, or for any once three quarters are submitted.
    """
    triggerer_job = running_triggerer_job(deployment)
    most_deferred = 0

    def midway() -> bool:
        nonlocal most_deferred
        most_deferred = max(most_deferred, edit_states(deployment, run_id)["deferred"])
        submitted = accepted_creates(emulator) - creates_before
        held = triggers_held_by(deployment, triggerer_job)
        return submitted >= EDITS // 2 and held > 0 and (held >= BUSY_TRIGGERER or submitted >= EDITS * 3 // 4)

    wait_for(
        midway, timeout=MIDWAY_TIMEOUT_SECONDS, what=f"{EDITS // 2} edits submitted, some waiting in the triggerer"
    )
    deployment.kill("triggerer")
    killed_at = time.monotonic()
    orphaned = triggers_held_by(deployment, triggerer_job)
    states_at_kill = edit_states(deployment, run_id)
    deployment.start("triggerer")
    wait_for(
        lambda: triggers_held_by(deployment, triggerer_job) == 0,
        timeout=TAKEOVER_TIMEOUT_SECONDS,
        what="a new triggerer to take over the killed one's triggers",
    )
    return TriggererCrash(orphaned, states_at_kill, most_deferred, time.monotonic() - killed_at)


def test_deferred_edits_survive_a_triggerer_crash_and_are_each_paid_once(
    deployment, emulator, system_workdir, measurement
):
    output = system_workdir / "deferred-edits"
    creates_before = accepted_creates(emulator)
    started = time.monotonic()
    run_id = deployment.trigger(DAG_ID, {"edits": EDITS, "output_uri": f"file://{output}"})

    crash = crash_triggerer_midway(deployment, emulator, run_id, creates_before)
    assert crash.orphaned_triggers > 0, "the triggerer held no trigger when it was killed: the crash tested nothing"
    assert crash.most_deferred > PARALLELISM, f"only {crash.most_deferred} edits waited at once: do waits hold slots?"

    state = deployment.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT_SECONDS)
    run_seconds = time.monotonic() - started
    edits = [ti for ti in deployment.task_instances(DAG_ID, run_id) if ti["task_id"] == "edit"]
    assert state == "success", Counter(ti["state"] for ti in edits)
    assert sorted(ti["map_index"] for ti in edits) == list(range(EDITS))
    assert {ti["state"] for ti in edits} == {"success"}

    results = edit_results(deployment, run_id)
    assert len(results) == EDITS
    assert len({result["apikley_task_id"] for result in results}) == EDITS
    assert_results_stored(results, [f"source-{index}.png" for index in range(EDITS)])
    assert len(list(output.glob("*.png"))) == EDITS
    creates = accepted_creates(emulator) - creates_before
    retries = sum(ti["try_number"] - 1 for ti in edits)
    # The crash retries no task; a try lost to a loaded machine's heartbeat resumes its edit where
    # Airflow keeps task state, and may submit it again before 3.3.
    paid_again = 0 if has_task_state_store() else retries
    assert EDITS <= creates <= EDITS + paid_again, f"{creates} createTask calls accepted for {EDITS} edits"

    # Reported against the target, not asserted: a shared 2-core machine makes any wall-time bound flaky.
    verdict = "met" if run_seconds <= WALL_TARGET_SECONDS else f"missed by {run_seconds / WALL_TARGET_SECONDS - 1:.0%}"
    measurement(
        MEASUREMENTS_SECTION,
        f"{EDITS} deferrable edits, parallelism {PARALLELISM}: run took {run_seconds:.0f} s "
        f"(target {WALL_TARGET_SECONDS:.0f} s, 1.3x the floor of 20 creates per 10 s: {verdict}); "
        f"createTask accepted {creates}; task retries {retries}; "
        f"up to {crash.most_deferred} edits deferred at once; triggerer SIGKILLed holding "
        f"{crash.orphaned_triggers} triggers (edit states then: {dict(crash.edit_states)}); "
        f"a new triggerer had taken them over {crash.takeover_seconds:.0f} s after the kill",
    )


def test_a_worker_killed_right_after_submitting_is_retried_and_resumes_where_airflow_keeps_task_state(
    deployment, emulator, system_workdir, measurement
):
    """Try 2 resumes try 1's Apikley task on Airflow 3.3; before 3.3 it submits anew and returns the new one."""
    output = system_workdir / "edit-killed-worker"
    before = emulator.stats()
    emulator.configure(faults=SLOW_RECORD_INFO)
    try:
        # A blocking wait, so the try is still on its worker after submitting: in its first status query,
        # held 30 s. (A deferrable try leaves the worker right after submitting, with nothing to kill.)
        run_id = deployment.trigger(DAG_ID, {"edits": 1, "output_uri": f"file://{output}", "deferrable": False})
        wait_for(
            lambda: (
                (stats := emulator.stats())["accepted_create_tasks"] > before["accepted_create_tasks"]
                and stats["slowed"].get("recordInfo", 0) > before["slowed"].get("recordInfo", 0)
            ),
            timeout=SUBMIT_TIMEOUT_SECONDS,
            what="the edit to submit and start its first status query",
            interval=0.2,
        )
        held_since = time.monotonic()
        (edit,) = [ti for ti in deployment.task_instances(DAG_ID, run_id) if ti["task_id"] == "edit"]
        worker = deployment.task_process(edit["id"])
        worker_title = " ".join(worker.cmdline()).strip()
        supervisor_title = " ".join(worker.parent().cmdline()).strip()
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        emulator.configure(faults={})

    state = deployment.wait_for_run(DAG_ID, run_id, timeout=SUBMIT_TIMEOUT_SECONDS)
    (edit,) = [ti for ti in deployment.task_instances(DAG_ID, run_id) if ti["task_id"] == "edit"]
    assert state == "success", edit
    assert edit["try_number"] == 2, "the killed try was not retried"
    creates = emulator.stats()["accepted_create_tasks"] - before["accepted_create_tasks"]

    first_try = task_log(deployment, run_id, attempt=1)
    retry = task_log(deployment, run_id, attempt=2)
    (created,) = re.findall(r"Created Apikley task (\w+)", first_try)
    (result,) = edit_results(deployment, run_id)
    if has_task_state_store():
        assert creates == 1, f"the retry paid again: {creates} createTask calls accepted for one edit"
        assert f"Resuming Apikley task {created}" in retry
        assert result["apikley_task_id"] == created
        retried = f"try 2 resumed Apikley task {created}"
    else:
        assert creates == 2, f"{creates} createTask calls accepted for one edit and one retry without task state"
        (resubmitted,) = re.findall(r"Created Apikley task (\w+)", retry)
        assert resubmitted != created and "Resuming" not in retry
        assert result["apikley_task_id"] == resubmitted
        retried = f"try 2 submitted Apikley task {resubmitted} anew (no task state store before Airflow 3.3)"
    assert_results_stored([result], ["source-0.png"])
    measurement(
        MEASUREMENTS_SECTION,
        f"worker killed right after submitting: SIGKILLed the task process {worker_title!r} "
        f"(child of {supervisor_title!r}); {retried}; createTask accepted {creates}",
    )
    # The killed try's status query is still held by the emulator; let it be answered here, so that
    # the next test's request counts start clean.
    time.sleep(max(0.0, held_since + SLOW_SECONDS + 1 - time.monotonic()))


def task_log(deployment: AirflowDeployment, run_id: str, attempt: int) -> str:
    """The text of one try's log of the first mapped ``edit``."""
    (path,) = (deployment.airflow_home / "logs").glob(
        f"dag_id={DAG_ID}/run_id={run_id}/task_id=edit/map_index=0/attempt={attempt}.log"
    )
    return path.read_text()


PRODUCER_DAG_ID = "qwen_callback_producer"
CONSUMER_DAG_ID = "qwen_callback_consumer"
CALLBACK_EDITS = 10
FINISHED_EDITS_ASSET = "apikley://qwen/image-to-image"
CALLBACK_TIMEOUT_SECONDS = 420.0  # a bound on a hang: Airflow 3.1 under load has taken 275 s


def upload_source_image(emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> str:
    from airflow_provider_qwen.demo.images import draw_product
    from airflow_provider_qwen.hooks.apikley import ApikleyHook

    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", emulator.airflow_connection())
    return ApikleyHook().upload_file(draw_product("Callbacks", "#e8f4f5", "#8e44ad"), "system/callbacks", "source.png")


def asset_events(deployment: AirflowDeployment, uri: str) -> list[dict[str, Any]]:
    rows = deployment.sql(
        "SELECT asset_event.extra FROM asset_event JOIN asset ON asset.id = asset_event.asset_id WHERE asset.uri = %s",
        (uri,),
    )
    return [extra for (extra,) in rows]


def callbacks_taken(emulator: EmulatorProcess, before: dict[str, Any]) -> int:
    return emulator.stats()["api_codes"].get("callback taken", 0) - before["api_codes"].get("callback taken", 0)


def has_partitioned_schedules() -> bool:
    """Airflow 3.2+ runs a DAG scheduled on partitioned asset events once per partition (the consumer's schedule)."""
    try:
        from airflow.sdk import PartitionedAssetTimetable  # noqa: F401
    except ImportError:
        return False
    return True


def consumer_runs(deployment: AirflowDeployment, since: set[str] = frozenset()) -> dict[str, str]:
    """The consumer's runs (``run_id: state``), but those in ``since``."""
    rows = deployment.sql("SELECT run_id, state FROM dag_run WHERE dag_id = %s", (CONSUMER_DAG_ID,))
    return {run_id: state for run_id, state in rows if run_id not in since}


def partitions_run(deployment: AirflowDeployment, partition_keys: set[str]) -> Counter[str]:
    """The states of the consumer's runs for ``partition_keys`` (Airflow 3.2+)."""
    rows = deployment.sql(
        "SELECT state FROM dag_run WHERE dag_id = %s AND partition_key = ANY(%s)",
        (CONSUMER_DAG_ID, list(partition_keys)),
    )
    return Counter(state for (state,) in rows)


def left_for_the_next_event(deployment: AirflowDeployment, edits: set[str]) -> set[str]:
    """
    The edits whose event no run of the consumer took, nor will until another event comes (Airflow 3.1).

    Airflow 3.1's scheduler deletes every queued event of the consumer once it has created a run,
    also one recorded while it was creating it: that event waits for the next one
    (apache/airflow#62501, fixed in 3.2). Such an event came after the consumer's last run was
    triggered, and nothing is queued for the consumer.
    """
    rows = deployment.sql(
        "SELECT e.extra->>'apikley_task_id' FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri = %s "
        "AND e.timestamp > (SELECT max(run_after) FROM dag_run WHERE dag_id = %s) "
        "AND NOT EXISTS (SELECT 1 FROM asset_dag_run_queue q WHERE q.target_dag_id = %s)",
        (FINISHED_EDITS_ASSET, CONSUMER_DAG_ID, CONSUMER_DAG_ID),
    )
    return {apikley_task_id for (apikley_task_id,) in rows} & edits


def submitted_task_ids(deployment: AirflowDeployment, dag_id: str, run_id: str) -> set[str]:
    """The Apikley task ids the run's ``submit`` tasks returned."""
    rows = deployment.sql(
        "SELECT value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = 'submit' AND key = 'return_value'",
        (dag_id, run_id),
    )
    return {value["apikley_task_id"] for (value,) in rows}


def failed_consumer_tasks(deployment: AirflowDeployment) -> str:
    """The consumer's failed task instances, with the end of each one's log."""
    rows = deployment.sql(
        "SELECT run_id, task_id, try_number FROM task_instance WHERE dag_id = %s AND state = 'failed'",
        (CONSUMER_DAG_ID,),
    )
    logs = deployment.airflow_home / "logs" / f"dag_id={CONSUMER_DAG_ID}"
    return "\n".join(
        f"{run_id} {task_id} try {try_number}:\n"
        + "".join(
            path.read_text()[-3000:]
            for path in logs.glob(f"run_id={run_id}/task_id={task_id}/**/attempt={try_number}.log")
        )
        for run_id, task_id, try_number in rows
    )


def test_signed_callbacks_start_the_consumer_with_no_status_polling(
    deployment, emulator, system_workdir, monkeypatch, measurement
):
    output = system_workdir / "callback-edits"
    image_url = upload_source_image(emulator, monkeypatch)
    wait_for(lambda: deployment.rest.dag(CONSUMER_DAG_ID), timeout=120, what=f"DAG {CONSUMER_DAG_ID} to be parsed")
    # Other tests of this deployment record events of the same asset: this one counts what its own
    # producer run caused (its edits' events, files and the consumer's runs since it started).
    earlier_runs = set(consumer_runs(deployment))
    deployment.rest.set_paused(CONSUMER_DAG_ID, False)
    before = emulator.stats()
    started = time.monotonic()

    run_id = deployment.trigger(PRODUCER_DAG_ID, {"images": [image_url] * CALLBACK_EDITS, "prompt": "studio light"})
    assert deployment.wait_for_run(PRODUCER_DAG_ID, run_id, timeout=CALLBACK_TIMEOUT_SECONDS) == "success"
    submitted = [ti for ti in deployment.task_instances(PRODUCER_DAG_ID, run_id) if ti["task_id"] == "submit"]
    assert len(submitted) == CALLBACK_EDITS
    edits = submitted_task_ids(deployment, PRODUCER_DAG_ID, run_id)
    assert len(edits) == CALLBACK_EDITS

    def copies() -> list[Path]:
        return [path for path in output.glob("*.png") if path.name.split("-")[0] in edits]

    def persisted() -> bool:
        runs = consumer_runs(deployment, since=earlier_runs)
        if "failed" in runs.values():
            raise StopWaiting(f"{CONSUMER_DAG_ID} failed: {failed_consumer_tasks(deployment)}")
        if set(runs.values()) != {"success"}:
            return False
        expected = edits if has_partitioned_schedules() else edits - left_for_the_next_event(deployment, edits)
        return {path.name.split("-")[0] for path in copies()} >= expected

    try:
        wait_for(
            persisted,
            timeout=CALLBACK_TIMEOUT_SECONDS,
            what=f"{CALLBACK_EDITS} results persisted by {CONSUMER_DAG_ID}",
            interval=1.0,
        )
    except TimeoutError as err:
        runs = consumer_runs(deployment, since=earlier_runs)
        raise TimeoutError(f"{err}; {len(copies())} copies, the consumer's runs since: {runs}") from None
    seconds = time.monotonic() - started
    # Every edit is delivered twice; the second may still be on its way (or retried: one signed in
    # the same second as the first is a replay, refused).
    wait_for(
        lambda: callbacks_taken(emulator, before) >= 2 * CALLBACK_EDITS,
        timeout=60,
        what=f"the emulator to deliver all {2 * CALLBACK_EDITS} callbacks",
        interval=1.0,
    )

    after = emulator.stats()
    requests = Counter(after["api_codes"]) - Counter(before["api_codes"])
    taken = requests["callback taken"]
    assert after["accepted_create_tasks"] - before["accepted_create_tasks"] == CALLBACK_EDITS
    assert taken == 2 * CALLBACK_EDITS, f"the receiver took {taken} of {2 * CALLBACK_EDITS} deliveries"
    # The producer never asked: the only status queries are the receiver's, one per delivery it took.
    assert requests["recordInfo 200"] == taken

    events = [
        event for event in asset_events(deployment, FINISHED_EDITS_ASSET) if event.get("apikley_task_id") in edits
    ]
    assert sorted(event["apikley_task_id"] for event in events) == sorted(edits), "an edit was recorded twice, or not"
    assert {event["state"] for event in events} == {"success"}
    left = set() if has_partitioned_schedules() else left_for_the_next_event(deployment, edits)
    assert len(copies()) == CALLBACK_EDITS - len(left)
    runs = Counter(consumer_runs(deployment, since=earlier_runs).values())
    if has_partitioned_schedules():
        assert partitions_run(deployment, edits) == {"success": CALLBACK_EDITS}, "partitioned by edit: one run each"
    else:  # Airflow 3.1: events that arrive close together share a run, and each edit is still copied once
        assert set(runs) == {"success"} and 1 <= runs["success"] <= CALLBACK_EDITS, runs
    measurement(
        MEASUREMENTS_SECTION,
        f"{CALLBACK_EDITS} edits by callback (each delivered twice, signed): all persisted {seconds:.0f} s after "
        f"the producer started; {taken} deliveries taken, {len(events)} asset events, {runs['success']} consumer "
        f"runs; recordInfo calls {requests['recordInfo 200']} (the receiver's), none by the producer"
        + (
            f"; {len(left)} event(s) left for the consumer's next event (Airflow 3.1, apache/airflow#62501)"
            if left
            else ""
        ),
    )


def test_concurrent_deliveries_of_one_task_record_one_event_on_postgres(deployment, emulator, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from airflow_provider_qwen.api_server.signing import callback_signature
    from airflow_provider_qwen.hooks.apikley import ApikleyHook
    from tests.system.conftest import WEBHOOK_SECRET

    image_url = upload_source_image(emulator, monkeypatch)
    hook = ApikleyHook()
    task_id = hook.create_task("qwen/image-to-image", {"prompt": "three at once", "image_url": image_url})
    wait_for(lambda: hook.get_task(task_id).state.is_terminal, timeout=60, what=f"Apikley task {task_id} to end")
    signed_at = int(time.time())

    def deliver(seconds_earlier: int) -> requests.Response:
        timestamp = str(signed_at - seconds_earlier)  # three distinct signatures, none of them a replay
        return requests.post(
            f"{deployment.api_url}/apikley/callback",
            json={"code": 200, "msg": "success", "data": {"taskId": task_id}},
            headers={
                "X-Webhook-Timestamp": timestamp,
                "X-Webhook-Signature": callback_signature(WEBHOOK_SECRET, task_id, timestamp),
            },
            timeout=30,
        )

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(deliver, range(3)))
    assert [answer.status_code for answer in answers] == [200, 200, 200], [answer.text for answer in answers]
    assert sorted(answer.json()["recorded"] for answer in answers) == [False, False, True]
    events = [e for e in asset_events(deployment, FINISHED_EDITS_ASSET) if e.get("apikley_task_id") == task_id]
    assert len(events) == 1


BATCH_DAG_ID = "qwen_system_batch"
BATCH_EDITS = 40


def test_a_batch_whose_worker_is_killed_midway_is_retried_and_resumes_where_airflow_keeps_task_state(
    deployment, emulator, system_workdir, measurement
):
    """
    Try 2 resumes what try 1 submitted and submits the rest on Airflow 3.3, paying once per edit;
    before 3.3 it submits the whole batch anew.
    """
    output = system_workdir / "batch"
    before = accepted_creates(emulator)
    run_id = deployment.trigger(BATCH_DAG_ID, {"edits": BATCH_EDITS, "output_uri": f"file://{output}"})

    def saved() -> int:
        if has_task_state_store():
            return batch_ids_saved(deployment, run_id)
        return accepted_creates(emulator) - before  # nothing to resume: stop it with every create sent answered

    wait_for(
        lambda: saved() >= BATCH_EDITS // 3,
        timeout=SUBMIT_TIMEOUT_SECONDS,
        what=f"a third of the batch's {BATCH_EDITS} edits to be submitted",
        interval=0.1,
    )
    (batch,) = [ti for ti in deployment.task_instances(BATCH_DAG_ID, run_id) if ti["task_id"] == "batch"]
    worker = deployment.task_process(batch["id"])
    stop_between_creates(worker, saved, lambda: accepted_creates(emulator) - before)
    worker.send_signal(signal.SIGKILL)
    submitted_when_killed = accepted_creates(emulator) - before

    state = deployment.wait_for_run(BATCH_DAG_ID, run_id, timeout=SUBMIT_TIMEOUT_SECONDS)
    (batch,) = [ti for ti in deployment.task_instances(BATCH_DAG_ID, run_id) if ti["task_id"] == "batch"]
    assert state == "success", batch
    assert batch["try_number"] == 2, "the killed try was not retried"
    assert submitted_when_killed < BATCH_EDITS, "the batch was all submitted before the kill: nothing was resumed"
    creates = accepted_creates(emulator) - before
    paid_again = 0 if has_task_state_store() else submitted_when_killed
    assert creates == BATCH_EDITS + paid_again, f"{creates} createTask calls accepted for {BATCH_EDITS} edits"

    ((results,),) = deployment.sql(
        "SELECT value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = 'batch' AND key = 'return_value'",
        (BATCH_DAG_ID, run_id),
    )
    assert [result["index"] for result in results] == list(range(BATCH_EDITS))
    assert {result["state"] for result in results} == {"success"}
    assert_results_stored(results, [f"source-{index}.png" for index in range(BATCH_EDITS)])
    (retry_log,) = (deployment.airflow_home / "logs").glob(
        f"dag_id={BATCH_DAG_ID}/run_id={run_id}/task_id=batch/attempt=2.log"
    )
    resumed = re.findall(r"Resuming (\d+) Apikley tasks", retry_log.read_text())
    assert resumed == ([str(submitted_when_killed)] if has_task_state_store() else [])
    retried = "resumed them and submitted the rest" if resumed else "submitted all anew (no task state store)"
    measurement(
        MEASUREMENTS_SECTION,
        f"batch of {BATCH_EDITS}: worker SIGKILLed after {submitted_when_killed} creates; try 2 {retried}; "
        f"createTask accepted {creates}; all {BATCH_EDITS} results stored (sha256 checked)",
    )
