"""
The provider on an Airflow cluster, through a worker, a triggerer and an api-server failing mid-run.

One run of 201 edits (120 mapped single edits, two catalogs of 40 in the batch operator, and one
straggler) on :class:`~tests.cluster.cluster.AirflowCluster`, with three faults on the way:

1. midway through the submissions, the triggerer holding the most triggers is SIGKILLed: the
   other one must take them over, and each trigger must fire once;
2. then one api-server is restarted (SIGTERM, started again on its port) while Apikley's callbacks
   arrive through the load balancer: no Asset event may be lost or doubled, and a callback
   replayed to either api-server must be refused;
3. once every other edit is submitted, the straggler is let go; right after its submit its Celery
   worker is SIGKILLed: its retry must run on the other worker and resume the same Apikley task.

The run happens once (module fixture ``fault_run``); each test checks one promise on what it left.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.cluster.balancer import callbacks_by_backend, skips_by_backend
from tests.cluster.cluster import API_SERVERS, TRIGGERERS, WORKERS, AirflowCluster
from tests.cluster.conftest import MEASUREMENTS
from tests.cluster.usage import UsageSampler, deployment_groups
from tests.cluster.workload import (
    BATCH_SIZE,
    BATCHES,
    DAG_ID,
    EDITS,
    FINISHED_EDITS_ASSET,
    FIRST_WAVE,
    GENERATION_LATENCY,
    SINGLE_EDITS,
    WEBHOOK_SECRET,
    WORKER_CONCURRENCY,
    create_gate_pool,
    open_gate_pool,
    trigger_workload,
)
from tests.system.deployment import EmulatorProcess
from tests.system.test_deployment import assert_results_stored
from tests.system.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

#: Seconds the straggler's first try waits between submitting and deferring: time to kill its worker.
STRAGGLER_PAUSE_SECONDS = 120

#: The triggerer is killed once it holds this many triggers, or any once three quarters are submitted.
BUSY_TRIGGERER = 10
MIDWAY_TIMEOUT_SECONDS = 300.0
TAKEOVER_TIMEOUT_SECONDS = 90.0
RESTART_TIMEOUT_SECONDS = 120.0
SUBMITTED_TIMEOUT_SECONDS = 300.0
STRAGGLER_TIMEOUT_SECONDS = 120.0
RETRY_TIMEOUT_SECONDS = 150.0
RUN_TIMEOUT_SECONDS = 300.0
CALLBACKS_TIMEOUT_SECONDS = 120.0

WAITING_STATES = ("deferred", "success")


def accepted_creates(emulator: EmulatorProcess) -> int:
    return emulator.stats()["accepted_create_tasks"]


def callbacks_taken(emulator: EmulatorProcess) -> int:
    return emulator.stats()["api_codes"].get("callback taken", 0)


def task_states(cluster: AirflowCluster, run_id: str, task_ids: tuple[str, ...]) -> Counter[str]:
    rows = cluster.sql(
        "SELECT state, count(*) FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = ANY(%s) "
        "GROUP BY state",
        (DAG_ID, run_id, list(task_ids)),
    )
    return Counter({state or "none": count for state, count in rows})


def running_triggerers(cluster: AirflowCluster) -> dict[int, str]:
    """The triggerers' running jobs: job id -> the triggerer's name (its hostname)."""
    rows = cluster.sql("SELECT id, hostname FROM job WHERE job_type = 'TriggererJob' AND state = 'running'")
    return dict(rows)


def triggers_held(cluster: AirflowCluster) -> Counter[int]:
    rows = cluster.sql("SELECT triggerer_id, count(*) FROM trigger WHERE triggerer_id IS NOT NULL GROUP BY 1")
    return Counter(dict(rows))


def task_instances_held_by(cluster: AirflowCluster, run_id: str, job_id: int) -> set[tuple[str, int]]:
    """
    The run's task instances (task id, map index) still deferred on a trigger the triggerer job holds.

    One whose trigger's event was already taken (the task instance scheduled again) is not waiting on
    it, though the trigger's row may name the job until Airflow cleans it up.
    """
    rows = cluster.sql(
        "SELECT ti.task_id, ti.map_index FROM task_instance ti JOIN trigger t ON t.id = ti.trigger_id "
        "WHERE ti.dag_id = %s AND ti.run_id = %s AND t.triggerer_id = %s AND ti.state = 'deferred'",
        (DAG_ID, run_id, job_id),
    )
    return set(rows)


@dataclass
class TriggererKill:
    killed: str
    killed_job: int
    survivor: str
    survivor_job: int
    orphans: set[tuple[str, int]]
    submitted_at_kill: int
    held_at_kill: dict[str, int]
    takeover_seconds: float
    #: Where the orphans still deferred were held once the killed triggerer held none: triggerer -> how many.
    moved_to: Counter[str] = field(default_factory=Counter)


def kill_a_busy_triggerer(
    cluster: AirflowCluster, emulator: EmulatorProcess, run_id: str, creates_before: int
) -> TriggererKill:
    """
    Once half the first wave is submitted, SIGKILL the triggerer holding the most triggers (and its
    trigger runner); return when the other one holds them all.
    """
    jobs = running_triggerers(cluster)
    assert sorted(jobs.values()) == sorted(TRIGGERERS), jobs

    def busiest() -> int | None:
        submitted = accepted_creates(emulator) - creates_before
        count, job = max((triggers_held(cluster)[job], job) for job in jobs)
        enough = count >= BUSY_TRIGGERER or (count > 0 and submitted >= FIRST_WAVE * 3 // 4)
        return job if submitted >= FIRST_WAVE // 2 and enough else None

    killed_job = wait_for(
        busiest, timeout=MIDWAY_TIMEOUT_SECONDS, what="half the edits submitted, some waiting in a triggerer"
    )
    killed = jobs[killed_job]
    cluster.kill(killed)
    killed_at = time.monotonic()
    held = triggers_held(cluster)
    orphans = task_instances_held_by(cluster, run_id, killed_job)
    submitted = accepted_creates(emulator) - creates_before
    (survivor_job,) = [job for job in jobs if job != killed_job]
    wait_for(
        lambda: triggers_held(cluster)[killed_job] == 0,
        timeout=TAKEOVER_TIMEOUT_SECONDS,
        what=f"{jobs[survivor_job]} to take over {killed}'s triggers",
    )
    takeover_seconds = time.monotonic() - killed_at
    # where the orphans still waiting are now, in one snapshot
    rows = cluster.sql(
        "SELECT ti.task_id, ti.map_index, t.triggerer_id FROM task_instance ti JOIN trigger t ON t.id = ti.trigger_id "
        "WHERE ti.dag_id = %s AND ti.run_id = %s AND ti.state = 'deferred'",
        (DAG_ID, run_id),
    )
    moved_to = Counter(jobs.get(job, f"job {job}") for task, index, job in rows if (task, index) in orphans)
    return TriggererKill(
        killed=killed,
        killed_job=killed_job,
        survivor=jobs[survivor_job],
        survivor_job=survivor_job,
        orphans=orphans,
        submitted_at_kill=submitted,
        held_at_kill={jobs[job]: held[job] for job in jobs},
        takeover_seconds=takeover_seconds,
        moved_to=moved_to,
    )


def signed_callback(task_id: str, timestamp: int | None = None) -> dict[str, Any]:
    """The request Apikley sends when ``task_id`` ends (signed now, or at ``timestamp``): a replay repeats it."""
    from airflow_provider_qwen.api_server.signing import callback_signature

    signed_at = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "json": {"code": 200, "msg": "success", "data": {"taskId": task_id}},
        "headers": {
            "X-Webhook-Timestamp": signed_at,
            "X-Webhook-Signature": callback_signature(WEBHOOK_SECRET, task_id, signed_at),
        },
    }


def deliver(cluster: AirflowCluster, api_server: str, request: dict[str, Any]) -> requests.Response:
    """POST a callback to one api-server, past the balancer."""
    return requests.post(f"{cluster.api_server_url(api_server)}/apikley/callback", timeout=30, **request)


def recorded_events(cluster: AirflowCluster) -> list[str]:
    """The Apikley task id of each event of the finished-edits asset."""
    rows = cluster.sql(
        "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri = %s ORDER BY e.id",
        (FINISHED_EDITS_ASSET,),
    )
    return [extra["apikley_task_id"] for (extra,) in rows]


@dataclass
class ApiServerRestart:
    restarted: str
    down_seconds: float
    callbacks_taken_meanwhile: int
    #: Answers to a callback api-server-b accepted before its restart, replayed to each api-server after.
    replays: dict[str, int]
    #: Answers to a fresh, correctly signed delivery of an edit already recorded, to each api-server.
    duplicates: dict[str, tuple[int, Any]]
    captured_status: int
    skips_meanwhile: int


def restart_an_api_server_while_callbacks_arrive(
    cluster: AirflowCluster, emulator: EmulatorProcess
) -> ApiServerRestart:
    """
    Capture a signed callback accepted by one api-server, restart that api-server while Apikley's
    callbacks keep arriving, then replay the captured callback to each api-server.
    """
    restarted, other = API_SERVERS[1], API_SERVERS[0]
    recorded = wait_for(lambda: recorded_events(cluster), timeout=60, what="a first edit recorded by callback")
    captured = signed_callback(recorded[0])
    captured_status = deliver(cluster, restarted, captured).status_code

    taken_before, skips_before = callbacks_taken(emulator), skips_by_backend(cluster.balancer_log)[restarted]
    stopped_at = time.monotonic()
    cluster.restart(restarted)
    cluster.wait_until_answering(restarted, timeout=RESTART_TIMEOUT_SECONDS)
    down_seconds = time.monotonic() - stopped_at
    taken = callbacks_taken(emulator) - taken_before
    skips = skips_by_backend(cluster.balancer_log)[restarted] - skips_before

    replays = {api_server: deliver(cluster, api_server, captured).status_code for api_server in (restarted, other)}
    time.sleep(1.1)  # a fresh signature: a second later than any signed before
    duplicates = {}
    for api_server in API_SERVERS:
        answer = deliver(cluster, api_server, signed_callback(recorded[0]))
        duplicates[api_server] = (answer.status_code, answer.json().get("recorded") if answer.ok else None)
        time.sleep(1.1)
    return ApiServerRestart(restarted, down_seconds, taken, replays, duplicates, captured_status, skips)


def straggler(cluster: AirflowCluster, run_id: str) -> dict[str, Any] | None:
    rows = cluster.sql(
        "SELECT state, try_number, hostname FROM task_instance WHERE dag_id = %s AND run_id = %s "
        "AND task_id = 'straggler'",
        (DAG_ID, run_id),
    )
    return dict(zip(("state", "try_number", "hostname"), rows[0], strict=True)) if rows else None


def pushed_task_id(cluster: AirflowCluster, run_id: str, task_id: str) -> str | None:
    """The Apikley task id a task pushed as soon as it submitted (XCom ``apikley_task_id``)."""
    rows = cluster.sql(
        "SELECT value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = %s AND key = 'apikley_task_id'",
        (DAG_ID, run_id, task_id),
    )
    return rows[0][0] if rows else None


@dataclass
class WorkerKill:
    killed: str
    created: str
    creates_at_kill: int
    busy_at_kill: list[tuple[str, int]]
    retry: dict[str, Any]
    retry_after_seconds: float


def kill_the_stragglers_worker(
    cluster: AirflowCluster, emulator: EmulatorProcess, run_id: str, creates_before: int
) -> WorkerKill:
    """
    When every edit but the straggler is submitted and waiting, let the straggler go; once it has
    submitted (its Apikley task id saved and pushed), while it pauses before deferring, SIGKILL its
    Celery worker (main process, pool and task processes). Return when its retry is running.
    """
    wait_for(
        lambda: (
            accepted_creates(emulator) - creates_before >= FIRST_WAVE
            and set(task_states(cluster, run_id, ("edit", "catalog"))) <= {*WAITING_STATES, "running"}
            and not task_states(cluster, run_id, ("edit",))["running"]
        ),
        timeout=SUBMITTED_TIMEOUT_SECONDS,
        what=f"all {FIRST_WAVE} edits of the first wave submitted and waiting",
    )
    open_gate_pool(cluster)
    created = wait_for(
        lambda: pushed_task_id(cluster, run_id, "straggler"),
        timeout=STRAGGLER_TIMEOUT_SECONDS,
        what="the straggler to submit its edit",
        interval=0.2,
    )
    first_try = straggler(cluster, run_id)
    assert first_try["state"] == "running" and first_try["try_number"] == 1, first_try
    killed = first_try["hostname"]

    def running_there() -> list[tuple[str, int]]:
        return cluster.sql(
            "SELECT task_id, map_index FROM task_instance WHERE dag_id = %s AND run_id = %s AND state = 'running' "
            "AND hostname = %s ORDER BY 1, 2",
            (DAG_ID, run_id, killed),
        )

    # While the straggler pauses, wait until its worker runs nothing else (a catalog copying its
    # results, say), so that the kill retries the straggler alone.
    busy = wait_for(
        lambda: (running := running_there()) == [("straggler", -1)] and running,
        timeout=STRAGGLER_PAUSE_SECONDS / 2,
        what=f"{killed} to run nothing but the straggler",
        interval=0.2,
    )
    cluster.kill(killed)
    killed_at = time.monotonic()
    creates_at_kill = accepted_creates(emulator) - creates_before
    retry = wait_for(
        lambda: (
            ((now := straggler(cluster, run_id))["try_number"] >= 2 and now["state"] in ("running", *WAITING_STATES))
            and now
        ),
        timeout=RETRY_TIMEOUT_SECONDS,
        what="the straggler's retry to start",
    )
    return WorkerKill(killed, created, creates_at_kill, busy, retry, time.monotonic() - killed_at)


@dataclass
class FaultRun:
    run_id: str
    state: str
    seconds: float
    output: Path
    creates: int
    triggerer: TriggererKill
    api_server: ApiServerRestart
    worker: WorkerKill
    usage: UsageSampler


@pytest.fixture(scope="module")
def fault_run(cluster: AirflowCluster, emulator: EmulatorProcess, cluster_workdir: Path) -> FaultRun:
    """The 201-edit run through the three faults; it ends (success or not) before any test looks at it."""
    output = cluster_workdir / "shared-output"
    create_gate_pool(cluster, slots=0)
    creates_before = accepted_creates(emulator)
    with UsageSampler(deployment_groups(cluster, emulator)) as usage:
        started = time.monotonic()
        run_id = trigger_workload(cluster, output, straggler_pause=STRAGGLER_PAUSE_SECONDS)
        triggerer = kill_a_busy_triggerer(cluster, emulator, run_id, creates_before)
        api_server = restart_an_api_server_while_callbacks_arrive(cluster, emulator)
        worker = kill_the_stragglers_worker(cluster, emulator, run_id, creates_before)
        state = cluster.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT_SECONDS)
        seconds = time.monotonic() - started
    creates = accepted_creates(emulator) - creates_before
    run = FaultRun(run_id, state, seconds, output, creates, triggerer, api_server, worker, usage)
    MEASUREMENTS.extend(describe(run))
    return run


def describe(run: FaultRun) -> list[str]:
    t, a, w = run.triggerer, run.api_server, run.worker
    return [
        f"{EDITS} edits ({SINGLE_EDITS} mapped, {BATCHES} batches of {BATCH_SIZE}, 1 straggler) on 2 Celery workers x "
        f"{WORKER_CONCURRENCY}, emulator latency {'+'.join(f'{s:g}' for s in GENERATION_LATENCY)} s: run "
        f"{run.state} in {run.seconds:.0f} s; createTask accepted {run.creates}",
        f"triggerer: {t.killed} SIGKILLed holding {len(t.orphans)} of the run's triggers "
        f"({t.submitted_at_kill} edits submitted; triggers held {t.held_at_kill}); {t.survivor} held them all "
        f"{t.takeover_seconds:.0f} s later",
        f"api-server: {a.restarted} down {a.down_seconds:.0f} s (SIGTERM to answering again), "
        f"{a.callbacks_taken_meanwhile} callbacks taken meanwhile, {a.skips_meanwhile} connections skipped it; "
        f"captured callback replayed: {a.replays}; fresh duplicate: {a.duplicates}",
        f"worker: {w.killed} SIGKILLed right after the straggler created {w.created} (running there: "
        f"{w.busy_at_kill}); its retry started {w.retry_after_seconds:.0f} s later: {w.retry}",
        "per component during the run (CPU s and peak RSS of all its processes, task processes included):",
        *run.usage.table(),
    ]


def results_of(cluster: AirflowCluster, run_id: str) -> dict[tuple[str, int], Any]:
    rows = cluster.sql(
        "SELECT task_id, map_index, value FROM xcom WHERE dag_id = %s AND run_id = %s AND key = 'return_value' "
        "AND task_id IN ('edit', 'catalog', 'straggler')",
        (DAG_ID, run_id),
    )
    return {(task_id, map_index): value for task_id, map_index, value in rows}


def edit_results(cluster: AirflowCluster, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """
    One result dict per edit (each catalog's items', the singles', the straggler's), with the name of its file.

    The single edits are named after their source and map index, each catalog's items after their
    source, catalog and index (the DAG's ``result_name``), the straggler after its source.
    """
    found = []
    for (task_id, map_index), value in sorted(results_of(cluster, run_id).items()):
        if task_id == "catalog":
            found += [(f"source-catalog{map_index}-{item['index']}.png", item) for item in value]
        else:
            found.append((f"source-{map_index}.png" if task_id == "edit" else "source.png", value))
    return found


def test_the_run_succeeds_with_every_edit_stored_once_and_paid_once(cluster, emulator, fault_run):
    tis = cluster.task_instances(DAG_ID, fault_run.run_id)
    assert fault_run.state == "success", Counter((ti["task_id"], ti["state"]) for ti in tis)
    assert Counter(ti["task_id"] for ti in tis) == {
        "prepare": 1,
        "catalogs": 1,
        "edit": SINGLE_EDITS,
        "catalog": BATCHES,
        "straggler": 1,
    }
    assert {ti["state"] for ti in tis} == {"success"}

    names, results = zip(*edit_results(cluster, fault_run.run_id), strict=True)
    assert len(results) == EDITS
    assert {result["state"] for result in results} == {"success"}
    task_ids = [result["apikley_task_id"] for result in results]
    assert len(set(task_ids)) == EDITS
    assert_results_stored(list(results), list(names))
    # one file per edit in the shared folder, whichever worker or triggerer wrote it, and nothing else
    assert sorted(path.name for path in fault_run.output.iterdir()) == sorted(names)
    assert fault_run.creates == EDITS, f"{fault_run.creates} createTask calls accepted for {EDITS} edits"


#: When and which trigger fired, in a trigger log's JSON line or in the triggerer's own output.
FIRED_AT = re.compile(r'^(?:\{"timestamp":")?(?P<at>\d{4}-\d\d-\d\dT[\d:.]+Z)')
FIRED_NAME = re.compile(r"""name["=:]+['"]?(?P<name>[^'"]+ \(ID \d+\))""")


def trigger_firings(cluster: AirflowCluster, run_id: str) -> dict[tuple[str, int], Counter[str]]:
    """
    How often each task instance's trigger fired, by triggerer: the ``Trigger fired event`` lines in
    each triggerer's trigger logs (``attempt=<n>.log.trigger.<job id>.log`` in its home) and in its own
    output, where the last lines of a trigger's log sometimes land.
    """
    trigger_name = re.compile(rf"^{DAG_ID}/{re.escape(run_id)}/(?P<task>[^/]+)/(?P<index>-?\d+)/\d+ \(ID \d+\)$")
    fired: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
    for triggerer in TRIGGERERS:
        sources = [cluster.log_dir / f"{triggerer}.log", *(cluster.home(triggerer) / "logs").rglob("*.log.trigger.*")]
        lines = {
            (at["at"], found["name"])
            for path in sources
            for line in path.read_text().splitlines()
            if "Trigger fired event" in line and (at := FIRED_AT.search(line)) and (found := FIRED_NAME.search(line))
        }
        for _, name in lines:
            if matched := trigger_name.match(name):
                fired[(matched["task"], int(matched["index"]))][triggerer] += 1
    return fired


#: A triggerer's own line when its heartbeat comes back late.
HEARTBEAT_RECOVERED = re.compile(r"Heartbeat recovered after (?P<seconds>[\d.]+) seconds")


def lapsed_triggerers(cluster: AirflowCluster) -> set[str]:
    """
    The triggerers whose heartbeat came back later than ``[triggerer] triggerer_health_check_threshold``.

    Airflow hands such a triggerer's triggers to another while it still runs them.
    """
    from tests.system.airflow_env import TRIGGERER_HEALTH_CHECK_SECONDS

    return {
        triggerer
        for triggerer in TRIGGERERS
        if any(
            float(found["seconds"]) >= TRIGGERER_HEALTH_CHECK_SECONDS
            for found in HEARTBEAT_RECOVERED.finditer((cluster.log_dir / f"{triggerer}.log").read_text())
        )
    }


def test_a_killed_triggerers_triggers_move_to_the_other_and_each_fires_once(cluster, fault_run):
    kill = fault_run.triggerer
    assert kill.orphans, "the killed triggerer held none of the run's triggers: the kill tested nothing"
    # every orphan still waiting once the killed triggerer held nothing was held by the survivor
    assert set(kill.moved_to) <= {kill.survivor}, kill.moved_to

    fired = trigger_firings(cluster, fault_run.run_id)
    lapsed = lapsed_triggerers(cluster)
    tis = cluster.task_instances(DAG_ID, fault_run.run_id)
    # Each edit and catalog deferred once. (The straggler's retry found its edit done and did not defer.)
    deferred = [(ti["task_id"], ti["map_index"]) for ti in tis if ti["task_id"] in ("edit", "catalog")]
    counted = {}
    for key in deferred:
        by_triggerer = fired.get(key, Counter())
        # An orphan's trigger may have fired in the killed triggerer after its last committed event and
        # before the kill: that event never took effect (the trigger was still held when it died).
        if key in kill.orphans:
            by_triggerer.pop(kill.killed, None)
        # A triggerer that missed its health check threshold (alive, but its loop held up) loses its
        # triggers to the other while it still runs them: Airflow then fires such a trigger once in each.
        if len(by_triggerer) == 2 and set(by_triggerer) & lapsed:
            by_triggerer = Counter({triggerer: 1 for triggerer in by_triggerer if triggerer not in lapsed})
        counted[key] = sum(by_triggerer.values())
    assert Counter(counted.values()) == {1: len(deferred)}, {key: n for key, n in counted.items() if n != 1}
    taken_over = [key for key in kill.orphans if fired.get(key, Counter())[kill.survivor] == 1]
    assert sorted(taken_over) == sorted(kill.orphans), "an orphaned trigger did not fire in the survivor"
    tries = {ti["try_number"] for ti in tis if ti["task_id"] in ("edit", "catalog")}
    assert tries == {1}, "a trigger's takeover cost a task a retry"


def test_a_worker_killed_right_after_a_submit_is_retried_on_the_other_worker_without_paying_again(
    cluster, emulator, fault_run
):
    kill = fault_run.worker
    (other,) = [worker for worker in WORKERS if worker != kill.killed]
    assert kill.creates_at_kill == EDITS, "the straggler's submit was not the last create when its worker died"
    assert kill.busy_at_kill == [("straggler", -1)], kill.busy_at_kill
    assert kill.retry["try_number"] == 2 and kill.retry["hostname"] == other, kill.retry
    history = cluster.sql(
        "SELECT try_number, hostname FROM task_instance_history WHERE dag_id = %s AND run_id = %s "
        "AND task_id = 'straggler' ORDER BY try_number",
        (DAG_ID, fault_run.run_id),
    )
    assert history[0] == (1, kill.killed), history

    logs = "logs", f"dag_id={DAG_ID}", f"run_id={fault_run.run_id}", "task_id=straggler"
    first_try = cluster.home(kill.killed).joinpath(*logs, "attempt=1.log").read_text()
    retry = cluster.home(other).joinpath(*logs, "attempt=2.log").read_text()
    assert f"Created Apikley task {kill.created}" in first_try
    assert f"Resuming Apikley task {kill.created}" in retry
    assert "Created Apikley task" not in retry
    assert results_of(cluster, fault_run.run_id)[("straggler", -1)]["apikley_task_id"] == kill.created
    assert fault_run.creates == EDITS, "the retry paid again"


def test_an_api_server_restarted_while_callbacks_arrive_loses_no_event_and_doubles_none(cluster, emulator, fault_run):
    restart = fault_run.api_server
    assert restart.callbacks_taken_meanwhile > 0, "no callback arrived while the api-server restarted"
    assert restart.skips_meanwhile > 0, "nothing came for the api-server while it was down"
    wait_for(
        lambda: callbacks_taken(emulator) >= 2 * EDITS,
        timeout=CALLBACKS_TIMEOUT_SECONDS,
        what=f"all {2 * EDITS} callbacks (two per edit) to be taken",
        interval=1.0,
    )
    events = recorded_events(cluster)
    task_ids = {result["apikley_task_id"] for _, result in edit_results(cluster, fault_run.run_id)}
    assert len(events) == len(set(events)), "an edit was recorded twice"
    assert set(events) == task_ids, "an edit's event is missing, or one is not of this run"
    answered = callbacks_by_backend(cluster.balancer_log)
    for api_server in API_SERVERS:
        assert answered[(api_server, "200")] > 0, f"{api_server} took no callback: {answered}"
    assert answered[("none", "none")] == 0, "a callback found no api-server"


def test_a_replayed_callback_is_refused_by_both_api_servers_and_a_duplicate_records_nothing(fault_run):
    restart = fault_run.api_server
    assert restart.captured_status == 200
    assert restart.replays == {api_server: 401 for api_server in API_SERVERS}
    assert restart.duplicates == {api_server: (200, False) for api_server in API_SERVERS}


def log_files(cluster: AirflowCluster, emulator: EmulatorProcess) -> list[Path]:
    """
    Every log of the deployment's processes: each component's output, every task and trigger log in
    every home, PostgreSQL's. Not the emulator's: it is Apikley, which holds the key (its command
    line, at the top of its log, gives it the key).
    """
    found = [path for folder in cluster.log_folders() for path in folder.rglob("*") if path.is_file()]
    return [path for path in [*found, cluster.postgres.server_log] if path != emulator.log_dir / "emulator.log"]


def test_the_api_key_is_in_no_log_of_any_process(cluster, emulator, fault_run):
    files = log_files(cluster, emulator)
    every_output = {process.log_path for process in cluster.components().values()}
    assert every_output <= set(files), "a component's output is not searched"
    task_logs = [path for path in files if "dag_id=" in path.as_posix()]
    assert len(task_logs) >= 2 * SINGLE_EDITS, "fewer task and trigger logs than edits: are they all searched?"
    for secret in (emulator.api_key, WEBHOOK_SECRET):
        leaks = [str(path) for path in files if secret.encode() in path.read_bytes()]
        assert not leaks, f"a secret is in {leaks}"
    MEASUREMENTS.append(f"the API key and the webhook key searched for in {len(files)} log files of every process")
