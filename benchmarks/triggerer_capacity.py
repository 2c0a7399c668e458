"""
How many concurrent ApikleyTaskTriggers one triggerer event loop carries, beside bare aiohttp loops.

``python -m benchmarks.triggerer_capacity [--n 100 1000 10000] [--window 30] [--interval 10]``

The emulator runs in its own process, with tasks that stay unfinished for a day; this process
creates one task per poller through ``createTask``, then measures each configuration (see
:mod:`benchmarks.triggerer_pollers`) at each N in a fresh process, so every figure starts from a
clean heap. Every poller polls once per ``--interval`` seconds at every N, so the load grows with N
only; the default keeps the emulator at about 1,000 recordInfo answers a second at N=10,000, well
below what it can answer.

It prints one row per configuration and N, the CPU per poll of the provider's triggers against the
bare shared-session loop measured in the same run, and whether the targets are met. It exits
non-zero when a poll failed or a measurement could not be made, never for a missed target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from airflow_provider_qwen import __version__
from airflow_provider_qwen.connection_form import DEFAULT_TIMEOUT_SECONDS
from benchmarks.triggerer_pollers import (
    BARE_SESSION_PER_POLLER,
    BARE_SHARED_SESSION,
    CONFIGURATIONS,
    OPTIONAL_CONFIGURATIONS,
    PROVIDER,
    PROVIDER_GREENBACK_PORTAL,
    PROVIDER_SESSION_PER_TRIGGER,
    Plan,
)

API_KEY = "triggerer-capacity-key"
MODEL = "qwen/image-to-image"
#: Seconds a task waits in the emulator before it starts; longer than any measurement.
TASK_LIFETIME_SECONDS = 86_400
#: Concurrent createTask calls while the tasks are made.
CREATE_CONCURRENCY = 16
#: Seconds the emulator may take to answer its health check after it starts.
EMULATOR_START_SECONDS = 30.0
#: Seconds a configuration's process may take beyond its warm-up and window.
PROCESS_SLACK_SECONDS = 180.0

TARGET_N = 10_000
TARGET_LAG_P99_MS = 100.0
TARGET_RSS_PER_TRIGGER_BYTES = 20 * 1024
TARGET_CPU_RATIO = 1.5

LABELS = {
    PROVIDER: "provider (shared session)",
    PROVIDER_SESSION_PER_TRIGGER: "provider, session per trigger",
    BARE_SHARED_SESSION: "bare aiohttp, shared session",
    BARE_SESSION_PER_POLLER: "bare aiohttp, session/poller",
    PROVIDER_GREENBACK_PORTAL: "provider + greenback portal",
}


class BenchmarkError(RuntimeError):
    """A measurement could not be made, or a poll failed."""


# ---- the emulator --------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def emulator_command(port: int) -> list[str]:
    """The emulator's command line: tasks that stay waiting, no credit or rate limit in the way."""
    return [
        sys.executable,
        "-m",
        "airflow_provider_qwen.emulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--api-key",
        API_KEY,
        "--credits",
        "1e12",
        "--cost-per-task",
        "0",
        "--rate-limit",
        "1000000",
        "--latency",
        str(TASK_LIFETIME_SECONDS),
        "0",
        "0",
        "--jitter",
        "0",
    ]


async def wait_until_healthy(base_url: str, process: subprocess.Popen) -> None:
    """Return once the emulator answers its health check; raise when it exited or took too long."""
    deadline = time.monotonic() + EMULATOR_START_SECONDS
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{base_url}/_emulator/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError(f"the emulator did not start at {base_url} (exit code {process.poll()})")
            await asyncio.sleep(0.1)


@contextmanager
def running_emulator(workdir: Path) -> Iterator[str]:
    """Run the emulator in its own process for the ``with`` block, its output in ``workdir``; yield its base URL."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with (workdir / "emulator.log").open("wb") as log:
        process = subprocess.Popen(emulator_command(port), stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            asyncio.run(wait_until_healthy(base_url, process))
        except BenchmarkError as err:
            raise BenchmarkError(f"{err}:\n{(workdir / 'emulator.log').read_text()[-3000:]}") from None
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def create_tasks(base_url: str, count: int) -> list[str]:
    """Create ``count`` tasks through ``createTask`` and return their ids."""
    body = {"model": MODEL, "input": {"prompt": "benchmark", "image_url": f"{base_url}/files/benchmark/source.png"}}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    task_ids: list[str] = []

    async def create_some(session: aiohttp.ClientSession, how_many: int) -> None:
        for _ in range(how_many):
            async with session.post(f"{base_url}/api/v1/jobs/createTask", json=body, headers=headers) as response:
                answer = await response.json()
            if answer.get("code") != 200:
                raise BenchmarkError(f"createTask refused a benchmark task: {answer!r}")
            task_ids.append(answer["data"]["taskId"])

    shares = [count // CREATE_CONCURRENCY + (index < count % CREATE_CONCURRENCY) for index in range(CREATE_CONCURRENCY)]
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(create_some(session, share) for share in shares))
    return task_ids


async def record_info_answers(base_url: str) -> dict[str, int]:
    """The emulator's count of recordInfo answers by body code (``"recordInfo 200"``...)."""
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/_emulator/stats") as response:
        stats = await response.json()
    return {name: count for name, count in stats["api_codes"].items() if name.startswith("recordInfo")}


# ---- one configuration in its own process --------------------------------------------------------


def provider_headers() -> dict[str, str]:
    """
    The headers the provider's hook sends with a status query, so the bare loops send the same.

    Spelled out rather than read off the hook, which would import Airflow here; the provider's
    measuring process checks that its hook sends exactly these.
    """
    return {
        "User-Agent": f"airflow-provider-qwen/{__version__}",
        "Accept": "application/json",
        "Authorization": f"Bearer {API_KEY}",
    }


def child_environment(base_url: str, airflow_home: str) -> dict[str, str]:
    """The environment of a measuring process: ``apikley_default`` at the emulator, a throw-away Airflow home."""
    connection = {"conn_type": "apikley", "host": base_url, "password": API_KEY}
    return {
        **os.environ,
        "AIRFLOW_CONN_APIKLEY_DEFAULT": json.dumps(connection),
        "AIRFLOW_HOME": airflow_home,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONUNBUFFERED": "1",
    }


@dataclass(frozen=True)
class Prepared:
    """A running emulator's plan, where it is written, and the environment of the measuring processes."""

    plan: Plan
    path: Path
    env: dict[str, str]


def run_child(prepared: Prepared, module: str, *arguments: str) -> str:
    """Run ``python -m module arguments...`` with the measuring environment; return what it printed."""
    plan = prepared.plan
    command = [sys.executable, "-m", module, *arguments]
    timeout = 3 * plan.interval + plan.warmup + plan.window + PROCESS_SLACK_SECONDS
    label = " ".join(argument for argument in arguments if argument != str(prepared.path))
    try:
        done = subprocess.run(command, env=prepared.env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{label} did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise BenchmarkError(f"{label} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


def measure_in_process(prepared: Prepared, configuration: str, n: int) -> dict[str, Any]:
    """Run one configuration at one N in a fresh process and return its figures."""
    output = run_child(prepared, "benchmarks.triggerer_pollers", str(prepared.path), configuration, str(n))
    return json.loads(output.strip().splitlines()[-1])


def check_answers(figures: dict[str, Any], before: dict[str, int], after: dict[str, int]) -> list[str]:
    """Problems with one configuration's polls: failures it saw, and answers the emulator gave that were not 200."""
    label = f"{figures['configuration']} at N={figures['n']}"
    problems = []
    if figures["failed_polls"]:
        problems.append(f"{label}: {figures['failed_polls']} polls failed: {figures['errors']}")
    refused = {name: count - before.get(name, 0) for name, count in after.items() if name != "recordInfo 200"}
    refused = {name: count for name, count in refused.items() if count}
    if refused:
        problems.append(f"{label}: the emulator answered {refused}")
    return problems


# ---- the report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column of the table: its heading, width and how a row's figures fill it."""

    heading: str
    width: int
    key: str
    scale: float = 1.0
    digits: int = 0


COLUMNS = (
    Column("N", 7, "n"),
    Column("polls/s", 9, "polls_per_second", digits=1),
    Column("target/s", 9, "target_polls_per_second", digits=1),
    Column("lag p50 ms", 11, "lag_p50_ms", digits=1),
    Column("lag p99 ms", 11, "lag_p99_ms", digits=1),
    Column("lag max ms", 11, "lag_max_ms", digits=1),
    Column("KB RSS/poller", 14, "rss_per_poller_bytes", scale=1 / 1024, digits=1),
    Column("CPU us/poll", 12, "cpu_per_poll_us"),
)
LABEL_WIDTH = 31


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The figures as a fixed-width table, one row per configuration and N."""
    lines = [f"{'configuration':<{LABEL_WIDTH}}" + "".join(f"{c.heading:>{c.width}}" for c in COLUMNS)]
    for row in rows:
        cells = "".join(f"{row[c.key] * c.scale:>{c.width},.{c.digits}f}" for c in COLUMNS)
        lines.append(f"{LABELS[row['configuration']]:<{LABEL_WIDTH}}{cells}")
    return lines


def figure(rows: list[dict[str, Any]], configuration: str, n: int, key: str) -> float | None:
    """One figure of one row, or ``None`` when that configuration did not run at that N."""
    for row in rows:
        if row["configuration"] == configuration and row["n"] == n:
            return row[key]
    return None


def ratio_lines(rows: list[dict[str, Any]], ns: list[int]) -> list[str]:
    """CPU per poll of each other configuration divided by the bare shared-session loop's, at each N."""
    measured = dict.fromkeys(row["configuration"] for row in rows)
    others = [configuration for configuration in measured if configuration != BARE_SHARED_SESSION]
    lines = [
        f"CPU per poll / {LABELS[BARE_SHARED_SESSION]} at the same N:",
        f"{'N':>7}" + "".join(f"{LABELS[configuration]:>{LABEL_WIDTH}}" for configuration in others),
    ]
    for n in ns:
        bare = figure(rows, BARE_SHARED_SESSION, n, "cpu_per_poll_us")
        cells = []
        for configuration in others:
            cpu = figure(rows, configuration, n, "cpu_per_poll_us")
            cells.append(f"{cpu / bare:.2f}x" if cpu is not None and bare else "-")
        lines.append(f"{n:>7,}" + "".join(f"{cell:>{LABEL_WIDTH}}" for cell in cells))
    return lines


def verdict(met: bool | None) -> str:
    """PASS, MISS, or n/a when the run did not measure what the target needs."""
    return "n/a " if met is None else ("PASS" if met else "MISS")


def target_lines(rows: list[dict[str, Any]]) -> list[str]:
    """PASS or MISS for each target, read off the provider's triggers at N=10,000."""
    lag = figure(rows, PROVIDER, TARGET_N, "lag_p99_ms")
    rss = figure(rows, PROVIDER, TARGET_N, "rss_per_poller_bytes")
    cpu = figure(rows, PROVIDER, TARGET_N, "cpu_per_poll_us")
    bare = figure(rows, BARE_SHARED_SESSION, TARGET_N, "cpu_per_poll_us")
    cpu_ratio = cpu / bare if cpu is not None and bare else None
    lag_text = f"{lag:.1f} ms" if lag is not None else "not measured"
    rss_text = f"{rss / 1024:.1f} KB" if rss is not None else "not measured"
    ratio_text = f"{cpu_ratio:.2f}x" if cpu_ratio is not None else "not measured"
    return [
        f"Targets (provider triggers at N={TARGET_N:,}):",
        f"  {verdict(None if lag is None else lag < TARGET_LAG_P99_MS)}  event-loop lag p99 < "
        f"{TARGET_LAG_P99_MS:.0f} ms: {lag_text}",
        f"  {verdict(None if rss is None else rss <= TARGET_RSS_PER_TRIGGER_BYTES)}  RSS per trigger <= "
        f"{TARGET_RSS_PER_TRIGGER_BYTES // 1024} KB: {rss_text}",
        f"  {verdict(None if cpu_ratio is None else cpu_ratio <= TARGET_CPU_RATIO)}  CPU per poll <= "
        f"{TARGET_CPU_RATIO}x the bare shared-session loop: {ratio_text}",
    ]


# ---- the whole run -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1_000, 10_000], help="numbers of concurrent pollers")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of measurement per configuration")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between two polls of one poller")
    parser.add_argument(
        "--warmup", type=float, help="seconds of polling after every poller polled once (default: one interval)"
    )
    parser.add_argument(
        "--configurations",
        nargs="+",
        choices=CONFIGURATIONS + OPTIONAL_CONFIGURATIONS,
        default=list(CONFIGURATIONS),
        metavar="CONFIGURATION",
        help=f"configurations to measure, of {', '.join(CONFIGURATIONS + OPTIONAL_CONFIGURATIONS)} "
        f"(default: all but {', '.join(OPTIONAL_CONFIGURATIONS)})",
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    return parser


@contextmanager
def prepared_plan(workdir: Path, max_n: int, interval: float, warmup: float, window: float) -> Iterator[Prepared]:
    """Start the emulator, create ``max_n`` tasks in it and write the plan; the emulator stops when the block ends."""
    with running_emulator(workdir) as base_url:
        plan = Plan(
            base_url=base_url,
            headers=provider_headers(),
            timeout=float(DEFAULT_TIMEOUT_SECONDS),
            task_ids=asyncio.run(create_tasks(base_url, max_n)),
            interval=interval,
            warmup=warmup,
            window=window,
        )
        plan_path = workdir / "plan.json"
        plan_path.write_text(json.dumps(asdict(plan)))
        yield Prepared(plan, plan_path, child_environment(base_url, str(workdir / "airflow-home")))


def measure_all(args: argparse.Namespace, workdir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every configuration at every N against one emulator; return the rows and the problems seen."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    warmup = args.interval if args.warmup is None else args.warmup
    with prepared_plan(workdir, max(args.n), args.interval, warmup, args.window) as prepared:
        base_url = prepared.plan.base_url
        for n in args.n:
            for configuration in args.configurations:
                before = asyncio.run(record_info_answers(base_url))
                row = measure_in_process(prepared, configuration, n)
                problems += check_answers(row, before, asyncio.run(record_info_answers(base_url)))
                row["target_polls_per_second"] = n / args.interval
                rows.append(row)
                print(f"measured {LABELS[configuration].strip()} at N={n:,}", file=sys.stderr, flush=True)
    return rows, problems


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, the ratios and the targets; return the exit code."""
    args = build_parser().parse_args(argv)
    if min(args.n) < 1 or args.window <= 0 or args.interval <= 0:
        raise SystemExit("--n, --window and --interval must be positive")
    # the machine may be shared: the load average tells how much of it the figures had
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="triggerer-capacity-") as workdir:
        try:
            rows, problems = measure_all(args, Path(workdir))
        except BenchmarkError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(
        f"Each poller polls every {args.interval:g} s; {args.window:g} s window after "
        f"{args.interval if args.warmup is None else args.warmup:g} s of warm-up. "
        f"{os.cpu_count()} CPUs, load average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after."
    )
    for line in [*table_lines(rows), "", *ratio_lines(rows, args.n), "", *target_lines(rows)]:
        print(line)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems or any(math.isnan(row["cpu_per_poll_us"]) for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
