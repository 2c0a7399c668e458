"""
N mapped Qwen edits several ways on one real Airflow deployment: this provider against what users write today.

``python -m benchmarks.compare_waits [--edits 50] [--parallelism 8] [--edit-seconds 6 30]``

One emulator process and one deployment (PostgreSQL, scheduler with the LocalExecutor,
dag-processor, triggerer, api-server; see ``tests/system/deployment.py``) run the DAGs of
``benchmarks/dags`` one after the other, each over the same uploaded image, for each edit duration:

(a) ``bench_provider_deferrable``: ``QwenImageToImageOperator(deferrable=True)``, mapped, with its
    defaults (the first query once an answer is due, then Apikley's advised cadence; a success ends
    the task in the triggerer).
(b) ``bench_http_sensor``: ``HttpOperator`` POSTs createTask, ``HttpSensor(deferrable=True)`` with a
    ``response_check`` waits; both mapped, so the sensors start once every create is done.
(c) ``bench_python_sleep``: a mapped ``@task`` that POSTs with ``requests`` and polls in a sleep loop.
(d) ``bench_http_task_group``: (b)'s two operators in a mapped task group, so each sensor starts
    right after its own create: the shape a user writes for per-item waits.
(e) ``bench_noop``: as many mapped ``PythonOperator`` tasks returning at once, no edit: Airflow's own
    floor for N task instances on this deployment.
(f) ``bench_deferral_floor``: as many mapped tasks, each deferring to Airflow's ``DateTimeTrigger``
    for as long as an edit takes and ended by it in the triggerer, as (a) is: Airflow's price for
    deferring at all. ``make bench-floor`` (``--workloads a e f --edits 200``) sets the provider
    against both floors.

(g) ``bench_provider_callbacks``: (a), each edit created with the provider's ``callback_url()``, so its
    wait ends when the emulator calls the api-server's receiver back; ``--lost-callbacks`` of them
    (10% by default) are never sent, and end by the trigger's own query after
    ``--callback-fallback`` seconds.

(b), (c) and (d) poll every ``POLL_SECONDS`` (2 s) of their DAG files. Before each duration the
triggerer is restarted and every DAG warmed up, so (a)'s triggerer has learned that duration as a
long-running one has. Each run is checked (the run and every task instance succeeded, N results
with URLs, exactly N tasks created and N succeeded on the emulator) and measured:

- wall time: the DAG run's ``end_date - start_date`` in the metadata database;
- worker-slot-seconds: the number of the run's task instances in state ``running``, read from the
  metadata database every ``--sample-interval`` seconds and integrated over time (a ``deferred``
  task instance holds no slot);
- HTTP requests per edit: the emulator's request counters after the run minus before, by endpoint;
- createTask answered 429, and the create rate achieved: the run's creates from its first to its
  last, per 10 s, against the emulator's limit (``--rate-limit 20``, Apikley's, shows how close the
  shared create pace keeps mapped edits to it);
- latency: from each edit's ``completeTime`` on Apikley to the end of its task instance, p50 and p90;
  for (f), from the moment its wait ends to the end of its task instance: Airflow's own part;
- CPU seconds (user + system) and peak RSS (summed over the group's processes, sampled) of the
  scheduler and of the triggerer: each component's process and its descendants, less the
  LocalExecutor's workers and their task processes (titled ``airflow worker ...``). The api-server,
  which answers the task processes, the workers (with the task processes they reaped) and the
  dag-processor (which re-parses a DAG file for each task callback Airflow sends it) are shown
  beside them.

It prints a table and the ratios against (a), and exits non-zero when a check failed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import requests

from airflow_provider_qwen.demo.images import draw_product
from benchmarks.compare_connections import connection_environment
from benchmarks.compare_sampling import (
    ProcessGroup,
    RunSampler,
    component_members,
    cpu_seconds_with_reaped_children,
    worker_members,
)
from benchmarks.compare_workloads import (
    DAGS_FOLDER,
    DEFERRAL_FLOOR,
    FLOORS,
    NOOP,
    PROVIDER,
    PROVIDER_CALLBACKS,
    WORKLOADS,
    Workload,
    apikley_task_id,
    dag_conf,
    result_urls,
)
from tests.system.deployment import AirflowDeployment, EmulatorProcess

#: Seconds between status queries: each DAG file's ``POLL_SECONDS``, kept there as a user would.
POLL_SECONDS = 2.0
#: Seconds between two runs, so one run's stragglers (trigger clean-up, heartbeats) settle first.
SETTLE_SECONDS = 5.0
MEBIBYTE = 1024 * 1024
#: Enough for any run: the emulator's default of 1000 credits (one per task) would run out at a few hundred edits.
EMULATOR_CREDITS = "1000000"

POLLING_ENDPOINTS = ("createTask", "recordInfo")
#: The key the emulator signs (g)'s callbacks with, and the connection's ``webhook_secret``.
CALLBACK_KEY = "bench-webhook-secret"
#: The window of the emulator's create limit (``--rate-limit`` creates in it), its default.
RATE_WINDOW_SECONDS = 10.0
#: Added to the modules the executor's fork server imports up front: the deployment preloads this
#: provider and ``@task``, and without these (b)'s task processes alone would import their operators.
EVEN_PRELOAD_MODULES = ("airflow.providers.http.operators.http", "airflow.providers.http.sensors.http", "requests")
#: The process groups measured, in the table's order.
COMPONENT_GROUPS = ("scheduler", "triggerer", "api-server", "dag-processor")
WORKERS = "workers"


@dataclass
class Measurement:
    """What one run of one workload measured, and what its checks found wrong."""

    workload: Workload
    edits: int
    run_id: str
    edit_seconds: float = 0.0
    wall_seconds: float = 0.0
    slot_seconds: float = 0.0
    peak_running: int = 0
    peak_deferred: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)
    counted: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    rate_limited: int = 0
    creates_per_window: float = 0.0
    callbacks: dict[str, int] = field(default_factory=dict)

    def latency(self, fraction: float) -> float:
        """The ``fraction`` percentile of the edits' latencies (``completeTime`` -> task instance end)."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")

    def requests_per_edit(self, endpoint: str) -> float:
        return self.requests.get(endpoint, 0) / self.edits


# ---- setup ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_waits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=50, help="mapped edits per DAG run (default: 50)")
    parser.add_argument("--parallelism", type=int, default=8, help="[core] parallelism, the worker slots (default: 8)")
    parser.add_argument(
        "--edit-seconds",
        type=float,
        nargs="+",
        default=(6.0, 30.0),
        help="how long an emulated edit takes, split 1:2:3 over waiting, queuing and generating; "
        "each duration is measured in turn (default: 6 30)",
    )
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=1000,
        help="createTask per 10 s the emulator accepts, which its connection tells the shared create pace "
        "(default: 1000, which never binds; Apikley's is 20)",
    )
    parser.add_argument(
        "--warmup-edits", type=int, default=10, help="edits of an unmeasured first run per DAG and duration; 0: none"
    )
    parser.add_argument(
        "--lost-callbacks", type=float, default=0.1, help="fraction of (g)'s callbacks never sent (default: 0.1)"
    )
    parser.add_argument(
        "--callback-fallback",
        type=float,
        default=30.0,
        help="[apikley] callback_fallback_seconds: when (g)'s waits ask Apikley themselves (default: 30)",
    )
    parser.add_argument("--sample-interval", type=float, default=0.2, help="seconds between samples (default: 0.2)")
    parser.add_argument("--run-timeout", type=float, default=900.0, help="seconds one DAG run may take")
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=[workload.key for workload in (*WORKLOADS, *FLOORS)],
        default=[workload.key for workload in WORKLOADS],
        help="which ways to run (default: a b c d g; e and f are Airflow's floors, with no deferral and with one)",
    )
    parser.add_argument("--workdir", type=Path, help="where logs and Airflow's home go (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.edits < 1 or args.parallelism < 1:
        parser.error("--edits and --parallelism must be at least 1")
    if min(args.edit_seconds) <= 0:
        parser.error("--edit-seconds must be positive")
    return args


def stage_latencies(edit_seconds: float) -> tuple[float, float, float]:
    """Waiting, queuing and generating seconds of an edit that takes ``edit_seconds``, split 1:2:3."""
    return (edit_seconds / 6, edit_seconds / 3, edit_seconds / 2)


def upload_source_image(emulator: EmulatorProcess) -> str:
    """Upload the image every edit starts from; return its URL."""
    upload_base_url = json.loads(emulator.airflow_connection())["extra"]["upload_base_url"]
    picture = draw_product("Benchmark", "#dfe7ef", "#c0392b")
    response = requests.post(
        f"{upload_base_url}/api/file-base64-upload",
        json={"base64Data": base64.b64encode(picture).decode(), "uploadPath": "bench", "fileName": "source.png"},
        headers={"Authorization": f"Bearer {emulator.api_key}"},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()["data"]["downloadUrl"]


def preload_environment() -> dict[str, str]:
    """``[core] mp_forkserver_preload`` with every way's operators, when the deployment preloads any."""
    from tests.system import airflow_env

    preloaded = getattr(airflow_env, "EXECUTOR_PRELOAD_MODULES", None)
    if not preloaded:
        return {}
    return {"AIRFLOW__CORE__MP_FORKSERVER_PRELOAD": ",".join((*preloaded, *EVEN_PRELOAD_MODULES))}


def process_groups(deployment: AirflowDeployment) -> dict[str, ProcessGroup]:
    """Fresh groups for one run: each component less task workers, and the workers with their reaped tasks."""
    groups = {
        component: ProcessGroup(component_members(lambda component=component: deployment.process(component)))
        for component in COMPONENT_GROUPS
    }
    groups[WORKERS] = ProcessGroup(
        worker_members(lambda: deployment.process("scheduler")), cpu_of=cpu_seconds_with_reaped_children
    )
    return groups


def metadata_connection(deployment: AirflowDeployment):
    """A connection to the metadata database that sees every commit at once (autocommit)."""
    import psycopg2

    connection = psycopg2.connect(**deployment.postgres.connect_kwargs(), connect_timeout=10)
    connection.autocommit = True
    return connection


# ---- one run -------------------------------------------------------------------------------------


def run_workload(
    deployment: AirflowDeployment,
    emulator: EmulatorProcess,
    workload: Workload,
    edits: int,
    image_url: str,
    args: argparse.Namespace,
    edit_seconds: float,
) -> Measurement:
    """Run one DAG with ``edits`` edits of ``edit_seconds``, sample it until it ends, and check what it produced."""
    before = emulator.stats()
    tasks_before = {task["taskId"] for task in emulator.tasks()}
    groups = process_groups(deployment)
    for group in groups.values():
        group.sample()  # the CPU baseline, before the run exists
    run_id = deployment.trigger(workload.dag_id, conf=dag_conf(edits, image_url, wait_seconds=edit_seconds))
    sampler = RunSampler(
        lambda: metadata_connection(deployment), workload.dag_id, run_id, groups, interval=args.sample_interval
    )
    state = sampler.start().wait(args.run_timeout)
    after = emulator.stats()

    measurement = Measurement(workload, edits, run_id, edit_seconds)
    measurement.wall_seconds = run_wall_seconds(deployment, workload.dag_id, run_id)
    measurement.slot_seconds = sampler.slots.slot_seconds
    measurement.peak_running = sampler.slots.peak_running
    measurement.peak_deferred = sampler.slots.peak_deferred
    measurement.requests = requests_by_endpoint(before, after)
    measurement.rate_limited = answers_between(before, after, "createTask 429")
    measurement.callbacks = {fate: answers_between(before, after, f"callback {fate}") for fate in ("taken", "dropped")}
    created = [task["createTime"] / 1000 for task in emulator.tasks() if task["taskId"] not in tasks_before]
    measurement.creates_per_window = creates_per_window(created, RATE_WINDOW_SECONDS)
    measurement.cpu_seconds = {name: group.cpu_seconds for name, group in groups.items()}
    measurement.peak_rss = {name: group.peak_rss for name, group in groups.items()}
    measurement.counted = {name: group.counted() for name, group in groups.items()}
    measurement.problems = check_run(deployment, workload, run_id, state, edits, before, after)
    if not measurement.problems and workload.edits:
        measurement.latencies = completion_latencies(deployment, emulator, workload, run_id)
    elif not measurement.problems and workload == DEFERRAL_FLOOR:
        measurement.latencies = deferral_latencies(deployment, run_id)
    return measurement


def completion_latencies(
    deployment: AirflowDeployment, emulator: EmulatorProcess, workload: Workload, run_id: str
) -> list[float]:
    """Seconds from each edit's ``completeTime`` on Apikley to the end of its task instance (asked after counting)."""
    ids = deployment.sql(
        "SELECT map_index, value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = %s AND key = 'return_value'",
        (workload.dag_id, run_id, workload.id_task_id),
    )
    ended = dict(
        deployment.sql(
            "SELECT map_index, extract(epoch FROM end_date) FROM task_instance "
            "WHERE dag_id = %s AND run_id = %s AND task_id = %s",
            (workload.dag_id, run_id, workload.result_task_id),
        )
    )
    return [
        float(ended[map_index]) - emulator.record(apikley_task_id(decoded(value)))["completeTime"] / 1000
        for map_index, value in ids
    ]


def deferral_latencies(deployment: AirflowDeployment, run_id: str) -> list[float]:
    """Seconds from the end of each of (f)'s waits to the end of its task instance: Airflow's part of a latency."""
    rows = deployment.sql(
        "SELECT extract(epoch FROM ti.end_date), x.value FROM task_instance ti JOIN xcom x ON x.dag_id = ti.dag_id "
        "AND x.run_id = ti.run_id AND x.task_id = ti.task_id AND x.map_index = ti.map_index "
        "WHERE ti.dag_id = %s AND ti.run_id = %s AND ti.task_id = %s AND x.key = 'moment'",
        (DEFERRAL_FLOOR.dag_id, run_id, DEFERRAL_FLOOR.result_task_id),
    )
    return [float(ended) - float(decoded(moment)) for ended, moment in rows]


def run_wall_seconds(deployment: AirflowDeployment, dag_id: str, run_id: str) -> float:
    """The run's duration as the metadata database recorded it."""
    ((seconds,),) = deployment.sql(
        "SELECT extract(epoch FROM end_date - start_date) FROM dag_run WHERE dag_id = %s AND run_id = %s",
        (dag_id, run_id),
    )
    return float(seconds)


def creates_per_window(create_times: list[float], window_seconds: float) -> float:
    """
    The rate of creates from the first to the last, per ``window_seconds``; 0 for fewer than two.

    ``n`` creates evenly spaced at a limit of ``L`` per window take ``(n - 1) / L`` windows, so at
    the limit this is ``L``.
    """
    if len(create_times) < 2:
        return 0.0
    span = max(create_times) - min(create_times)
    return (len(create_times) - 1) / span * window_seconds if span > 0 else float("inf")


def answers_between(before: dict[str, Any], after: dict[str, Any], answer: str) -> int:
    """How many times the emulator gave ``answer`` (``"<endpoint> <code>"``) between two statistics."""
    return after["api_codes"].get(answer, 0) - before["api_codes"].get(answer, 0)


def requests_by_endpoint(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Requests the emulator answered between two statistics, by endpoint, whatever the answer code."""
    counts: dict[str, int] = {}
    for key, count in after["api_codes"].items():
        endpoint = key.split(" ", 1)[0]
        if endpoint == "callback":  # the emulator's own calls to the receiver, not requests to it
            continue
        counts[endpoint] = counts.get(endpoint, 0) + count - before["api_codes"].get(key, 0)
    return {endpoint: count for endpoint, count in counts.items() if count}


def check_run(
    deployment: AirflowDeployment,
    workload: Workload,
    run_id: str,
    state: str,
    edits: int,
    before: dict[str, Any],
    after: dict[str, Any],
) -> list[str]:
    """What the run got wrong: its state, a task instance's, a missing result, or a task created twice."""
    problems = []
    if state != "success":
        problems.append(f"the run ended {state}")
    task_states = deployment.sql(
        "SELECT task_id, state, count(*) FROM task_instance WHERE dag_id = %s AND run_id = %s "
        "GROUP BY task_id, state ORDER BY task_id",
        (workload.dag_id, run_id),
    )
    problems += [f"{count} x {task_id} ended {state}" for task_id, state, count in task_states if state != "success"]
    if not workload.edits:
        return problems
    results = deployment.sql(
        "SELECT value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = %s AND key = 'return_value'",
        (workload.dag_id, run_id, workload.result_task_id),
    )
    with_urls = sum(1 for (value,) in results if result_urls(decoded(value)))
    if with_urls != edits:
        problems.append(f"{with_urls} of {edits} edits returned result URLs")
    created = after["accepted_create_tasks"] - before["accepted_create_tasks"]
    if created != edits:
        problems.append(f"the emulator accepted {created} createTask calls for {edits} edits")
    succeeded = after["tasks_by_state"].get("success", 0) - before["tasks_by_state"].get("success", 0)
    if succeeded != edits:
        problems.append(f"{succeeded} emulated tasks succeeded for {edits} edits")
    return problems


def decoded(value: Any) -> Any:
    """An XCom value as stored: JSON, which the driver may hand over already decoded."""
    if not isinstance(value, str | bytes):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value  # a string value the driver already decoded


# ---- report --------------------------------------------------------------------------------------


def table(measurements: list[Measurement], rate_limit: int) -> list[str]:
    """The figures as a Markdown table, one row per way."""
    lines = [
        "| edit | way | wall s | worker-slot-s | peak running / deferred | HTTP requests per edit "
        "(create + recordInfo + other) | createTask 429s | creates per 10 s (of the limit) "
        "| latency p50 / p90 s | scheduler CPU s | triggerer CPU s "
        "| scheduler peak RSS MiB | triggerer peak RSS MiB | api-server CPU s | workers CPU s | dag-processor CPU s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in measurements:
        create, record = m.requests_per_edit("createTask"), m.requests_per_edit("recordInfo")
        other = sum(count for endpoint, count in m.requests.items() if endpoint not in POLLING_ENDPOINTS) / m.edits
        lines.append(
            f"| {m.edit_seconds:g} s | ({m.workload.key}) {m.workload.label} | {m.wall_seconds:.1f} "
            f"| {m.slot_seconds:.1f} | {m.peak_running} / {m.peak_deferred} "
            f"| {create + record + other:.2f} ({create:.2f} + {record:.2f} + {other:.2f}) "
            f"| {m.rate_limited} | {create_rate(m, rate_limit)} "
            f"| {m.latency(0.5):.1f} / {m.latency(0.9):.1f} "
            f"| {m.cpu_seconds['scheduler']:.1f} | {m.cpu_seconds['triggerer']:.1f} "
            f"| {m.peak_rss['scheduler'] / MEBIBYTE:.0f} | {m.peak_rss['triggerer'] / MEBIBYTE:.0f} "
            f"| {m.cpu_seconds['api-server']:.1f} | {m.cpu_seconds[WORKERS]:.1f} "
            f"| {m.cpu_seconds['dag-processor']:.1f} |"
        )
    return lines


def create_rate(measurement: Measurement, rate_limit: int) -> str:
    """The run's creates per 10 s, and what part of the emulator's limit that is; n/a for a run that created nothing."""
    if not measurement.workload.edits or not measurement.creates_per_window:
        return "n/a"
    return f"{measurement.creates_per_window:.1f} ({measurement.creates_per_window / rate_limit * 100:.0f} %)"


RATIO_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("wall", lambda m: m.wall_seconds),
    ("worker-slot-s", lambda m: m.slot_seconds),
    ("requests/edit", lambda m: sum(m.requests.values()) / m.edits),
    ("latency p50", lambda m: m.latency(0.5)),
    ("latency p90", lambda m: m.latency(0.9)),
    ("scheduler CPU", lambda m: m.cpu_seconds["scheduler"]),
    ("triggerer CPU", lambda m: m.cpu_seconds["triggerer"]),
    ("scheduler RSS", lambda m: m.peak_rss["scheduler"]),
    ("triggerer RSS", lambda m: m.peak_rss["triggerer"]),
    ("api-server CPU", lambda m: m.cpu_seconds["api-server"]),
    ("workers CPU", lambda m: m.cpu_seconds[WORKERS]),
    ("dag-processor CPU", lambda m: m.cpu_seconds["dag-processor"]),
)


def ratio_table(measurements: list[Measurement]) -> list[str]:
    """Each figure divided by (a)'s for the same edit duration, from the same run."""
    lines = [
        "| edit | way | " + " | ".join(name for name, _ in RATIO_COLUMNS) + " |",
        "|---:|---|" + "---:|" * len(RATIO_COLUMNS),
    ]
    for m in measurements:
        reference = next((r for r in measurements if r.workload == PROVIDER and r.edit_seconds == m.edit_seconds), None)
        if reference is None:
            return ["(no ratios: (a) did not run)"]
        cells = [ratio(figure(m), figure(reference)) for _, figure in RATIO_COLUMNS]
        lines.append(f"| {m.edit_seconds:g} s | ({m.workload.key}) / (a) | " + " | ".join(cells) + " |")
    return lines


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference else "n/a"


def setup_lines(args: argparse.Namespace) -> list[str]:
    durations = ", ".join(
        " + ".join(f"{seconds:g}" for seconds in stage_latencies(edit)) + f" = {edit:g} s" for edit in args.edit_seconds
    )
    return [
        f"N = {args.edits} mapped edits per run, [core] parallelism = {args.parallelism} (LocalExecutor), "
        f"(b), (c), (d) poll every {POLL_SECONDS:g} s, (a) as its defaults say",
        f"emulator: waiting + queuing + generating per task {durations} (+-20% jitter), "
        f"createTask limit {args.rate_limit} per 10 s; (g): {args.lost_callbacks:.0%} of callbacks lost, "
        f"[apikley] callback_fallback_seconds = {args.callback_fallback:g}",
        f"Airflow {version('apache-airflow')}, "
        f"apache-airflow-providers-http {version('apache-airflow-providers-http')}, "
        f"airflow-provider-qwen {version('airflow-provider-qwen')}, {os.cpu_count()} CPUs, "
        f"samples every {args.sample_interval:g} s",
    ]


def counted_lines(measurements: list[Measurement]) -> list[str]:
    """Which processes each CPU and RSS figure covers, as the samples saw them."""
    lines = []
    for m in measurements:
        for group, titles in m.counted.items():
            lines.append(f"({m.workload.key}) {group}: {'; '.join(titles) or '(none)'}")
    return lines


def floor_lines(args: argparse.Namespace, measurements: list[Measurement]) -> list[str]:
    """The provider's wall time against the larger of its two floors: the create limit's, and Airflow's."""
    lines = []
    for m in measurements:
        noop = next((n for n in measurements if n.workload == NOOP and n.edit_seconds == m.edit_seconds), None)
        if m.workload != PROVIDER or noop is None:
            continue
        create_floor = max(0, args.edits - args.rate_limit) * 10 / args.rate_limit
        floor = max(create_floor, noop.wall_seconds)
        lines.append(
            f"{m.edit_seconds:g} s edits: (a) {m.wall_seconds:.1f} s against the floor {floor:.1f} s "
            f"(create limit {create_floor:.1f} s, (e) no-op tasks {noop.wall_seconds:.1f} s): "
            f"{m.wall_seconds / floor:.2f}x; worker-slot-s {m.slot_seconds:.1f} against {noop.slot_seconds:.1f}"
        )
    return lines + deferral_floor_lines(measurements)


def deferral_floor_lines(measurements: list[Measurement]) -> list[str]:
    """The provider against Airflow's own deferral of as many tasks for as long: wall, slots and CPU by component."""
    lines = []
    for m in measurements:
        floor = next(
            (f for f in measurements if f.workload == DEFERRAL_FLOOR and f.edit_seconds == m.edit_seconds), None
        )
        if m.workload != PROVIDER or floor is None:
            continue
        cpu = ", ".join(
            f"{group} {m.cpu_seconds[group]:.1f} s / {floor.cpu_seconds[group]:.1f} s = "
            f"{ratio(m.cpu_seconds[group], floor.cpu_seconds[group])}"
            for group in (*COMPONENT_GROUPS, WORKERS)
        )
        lines.append(
            f"{m.edit_seconds:g} s edits: (a) against (f) Airflow's deferral: wall {m.wall_seconds:.1f} s / "
            f"{floor.wall_seconds:.1f} s = {ratio(m.wall_seconds, floor.wall_seconds)}, worker-slot-s "
            f"{m.slot_seconds:.1f} / {floor.slot_seconds:.1f} = {ratio(m.slot_seconds, floor.slot_seconds)}; CPU {cpu}"
        )
    return lines


def apikley_requests_per_edit(measurement: Measurement) -> float:
    """The run's createTask and recordInfo requests per edit."""
    return sum(measurement.requests.get(endpoint, 0) for endpoint in POLLING_ENDPOINTS) / measurement.edits


def callback_lines(measurements: list[Measurement]) -> list[str]:
    """(g)'s callbacks, and its Apikley requests and latency beside (a)'s."""
    lines = []
    for m in measurements:
        polled = next((r for r in measurements if r.workload == PROVIDER and r.edit_seconds == m.edit_seconds), None)
        if m.workload != PROVIDER_CALLBACKS:
            continue
        apikley = apikley_requests_per_edit(m)
        line = (
            f"{m.edit_seconds:g} s edits: (g) callbacks taken {m.callbacks.get('taken', 0)}, lost "
            f"{m.callbacks.get('dropped', 0)}; Apikley requests per edit {apikley:.2f}, latency p50 "
            f"{m.latency(0.5):.2f} s, p90 {m.latency(0.9):.2f} s"
        )
        if polled is not None:
            line += f"; (a) polling: {apikley_requests_per_edit(polled):.2f} per edit, p50 {polled.latency(0.5):.2f} s"
        same_edits = [f for f in measurements if f.edit_seconds == m.edit_seconds]
        floor = next((f for f in same_edits if f.workload == DEFERRAL_FLOOR), None)
        if floor is not None and floor.latencies:
            line += f"; (f) Airflow's deferral alone, its wait's end to the task's: p50 {floor.latency(0.5):.2f} s"
        lines.append(line)
    return lines


def report(args: argparse.Namespace, measurements: list[Measurement]) -> None:
    print(
        "\n".join(
            ["", *setup_lines(args), "", *table(measurements, args.rate_limit), "", *ratio_table(measurements), ""]
        )
    )
    print("\n".join([*floor_lines(args, measurements), *callback_lines(measurements), ""]))
    print("Processes counted:")
    print("\n".join(f"  {line}" for line in counted_lines(measurements)))
    for m in measurements:
        for problem in m.problems:
            print(f"CHECK FAILED ({m.workload.key}) {m.workload.dag_id} {m.run_id}: {problem}", file=sys.stderr)


# ---- main ----------------------------------------------------------------------------------------


def run_all(args: argparse.Namespace, workdir: Path) -> list[Measurement]:
    """Start the emulator and the deployment, warm each DAG up, then measure each in turn."""
    workloads = [workload for workload in (*WORKLOADS, *FLOORS) if workload.key in args.workloads]
    with EmulatorProcess(
        workdir,
        latency=stage_latencies(args.edit_seconds[0]),
        rate_limit=args.rate_limit,
        callback_key=CALLBACK_KEY,
        extra_args=("--credits", EMULATOR_CREDITS, "--callback-drop", str(args.lost_callbacks)),
    ) as emulator:
        image_url = upload_source_image(emulator)
        env = {
            **connection_environment(emulator.airflow_connection(), emulator.base_url, emulator.api_key),
            **preload_environment(),
            "AIRFLOW__APIKLEY__CALLBACK_FALLBACK_SECONDS": str(args.callback_fallback),
        }
        print(f"Starting Airflow (logs in {workdir / 'logs'})...", flush=True)
        with AirflowDeployment(workdir, DAGS_FOLDER, parallelism=args.parallelism, env=env) as deployment:
            measurements = []
            for edit_seconds in args.edit_seconds:
                emulator.configure(latency=stage_latencies(edit_seconds))
                deployment.kill("triggerer")  # a triggerer that has only seen edits of this duration
                deployment.start("triggerer")
                for workload in workloads if args.warmup_edits else ():
                    print(f"Warming up {workload.dag_id} ({args.warmup_edits} {edit_seconds:g} s edits)...", flush=True)
                    warmup = run_workload(
                        deployment, emulator, workload, args.warmup_edits, image_url, args, edit_seconds
                    )
                    if warmup.problems:
                        raise RuntimeError(f"the warm-up run of {workload.dag_id} failed: {warmup.problems}")
                    time.sleep(SETTLE_SECONDS)
                for workload in workloads:
                    print(f"Measuring ({workload.key}) {workload.dag_id}, {args.edits} {edit_seconds:g} s edits...")
                    measurement = run_workload(
                        deployment, emulator, workload, args.edits, image_url, args, edit_seconds
                    )
                    print(f"  {measurement.wall_seconds:.1f} s, {measurement.slot_seconds:.1f} slot-s", flush=True)
                    measurements.append(measurement)
                    time.sleep(SETTLE_SECONDS)
            return measurements


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        measurements = run_all(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="compare-waits-") as workdir:
            measurements = run_all(args, Path(workdir))
    report(args, measurements)
    return 1 if any(m.problems for m in measurements) else 0


if __name__ == "__main__":
    sys.exit(main())
