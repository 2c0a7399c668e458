"""
What copying results inside the triggerer does to the triggers that wait beside the copies.

``python -m benchmarks.triggerer_copies [--n 2000] [--copies 20] [--mb 20] [--interval 10]``

A deferred edit that ends in the triggerer copies its results to ``output_path`` there, in a
thread, exactly as :meth:`ApikleyTaskTrigger._end_task` does. This runs ``--n`` waiting
ApikleyTaskTriggers (their tasks never end, so they poll the emulator at ``--interval``) in one
event loop, in a fresh process per run, twice: once alone, once while ``--copies`` results of
``--mb`` MB each are copied from a loopback file server to a local folder. Each run reports the
waiting triggers' event-loop lag (p50, p99, max, sampled every 10 ms) and the process's peak RSS,
sampled every 20 ms, over the same window (two polls of each trigger, or as long as the copies
take); the copies' cost is the difference from the run without.
It exits non-zero when a copy or a poll failed, never for a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.triggerer_capacity import BenchmarkError, child_environment, create_tasks, running_emulator
from benchmarks.triggerer_pollers import LagTicker, after, percentile

#: What the waiting triggers' lag may grow by while the copies run, and the peak RSS the copies may add.
TARGET_LAG_P99_GROWTH_MS = 100.0
TARGET_RSS_GROWTH_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class Run:
    """What one process measured."""

    copies: int
    n: int
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    peak_rss_bytes: int
    copy_seconds: float
    copied_bytes: int
    failed: list[str]


# ---- the measuring process ----------------------------------------------------------------------


class PeakRss:
    """This process's resident memory, sampled every 20 ms in a thread; its peak."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._process.memory_info().rss)


async def wait(task_id: str, interval: float, failed: list[str]) -> None:
    from airflow_provider_qwen.triggers.apikley import ApikleyTaskTrigger

    async for event in ApikleyTaskTrigger(task_id, poll_interval=interval).run():
        failed.append(f"a waiting trigger fired: {event.payload!r}")


async def copy(result_url: str, folder: str) -> int:
    """Copy one result as a trigger that ends its task does: in a thread, through the hook."""
    from asgiref.sync import sync_to_async

    from airflow_provider_qwen.hooks.apikley import ApikleyHook
    from airflow_provider_qwen.results import with_stored_results

    summary = {"apikley_task_id": hashlib.sha256(result_url.encode()).hexdigest()[:32], "result_urls": [result_url]}
    summary.update(state="success", input={}, credits_consumed=1.0)
    stored = await sync_to_async(with_stored_results, thread_sensitive=False)(ApikleyHook(), summary, folder)
    return sum(item["size"] for item in stored["stored"])


async def measure(plan: dict[str, Any], copies: int) -> Run:
    """Start the waiting triggers, let each poll once, then measure while ``copies`` copies run (or as long)."""
    failed: list[str] = []
    ticker = LagTicker()
    ticker_task = asyncio.create_task(ticker.run())
    interval, task_ids = plan["interval"], plan["task_ids"]
    # started spread over one interval, so that their polls are too
    waits = [
        asyncio.create_task(after(index * interval / len(task_ids), partial(wait, task_id, interval, failed)))
        for index, task_id in enumerate(task_ids)
    ]
    await asyncio.sleep(interval + plan["warmup"])  # every trigger has polled once
    with tempfile.TemporaryDirectory() as folder, PeakRss() as rss:
        ticker.recording = True
        started = time.perf_counter()
        urls = [f"{plan['file_url']}?copy={index}" for index in range(copies)]
        outcomes = await asyncio.gather(*(copy(url, f"file://{folder}") for url in urls), return_exceptions=True)
        failed += [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
        copied = sum(o for o in outcomes if isinstance(o, int))
        elapsed = time.perf_counter() - started
        await asyncio.sleep(max(0.0, plan["window"] - elapsed))  # both runs measure as long
        ticker.recording = False
    for task in [*waits, ticker_task]:
        task.cancel()
    await asyncio.gather(*waits, ticker_task, return_exceptions=True)
    return Run(
        copies=copies,
        n=len(plan["task_ids"]),
        lag_p50_ms=1000 * percentile(ticker.lags, 0.50),
        lag_p99_ms=1000 * percentile(ticker.lags, 0.99),
        lag_max_ms=1000 * max(ticker.lags, default=0.0),
        peak_rss_bytes=rss.peak,
        copy_seconds=elapsed,
        copied_bytes=copied,
        failed=failed,
    )


def child_main(plan_path: str, copies: str) -> None:
    """Measure one run in this process and print it as one JSON line."""
    plan = json.loads(Path(plan_path).read_text())
    print(json.dumps(asdict(asyncio.run(measure(plan, int(copies))))))


# ---- the file server and the report -------------------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A loopback HTTP server for the files in ``folder``; the server and its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *args: QuietHandler(*args, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def result_file(folder: Path, megabytes: float) -> Path:
    """A result of ``megabytes`` MB whose first bytes are a PNG's, as every copy checks."""
    path = folder / "result.png"
    with path.open("wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        remaining = int(megabytes * 1024 * 1024) - 8
        while remaining > 0:
            block = os.urandom(min(remaining, 1024 * 1024))
            out.write(block)
            remaining -= len(block)
    return path


def run_child(env: dict[str, str], plan_path: Path, copies: int, timeout: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.triggerer_copies", "--child", str(plan_path), str(copies)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise BenchmarkError(f"the run with {copies} copies exited {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(runs: list[dict[str, Any]], megabytes: float) -> list[str]:
    quiet, busy = runs
    mib = 1024 * 1024
    lines = [
        f"{'run':<36}{'lag p50 ms':>11}{'lag p99 ms':>11}{'lag max ms':>11}{'peak RSS MiB':>13}{'seconds':>9}",
    ]
    for run, label in ((quiet, f"{quiet['n']} waiting triggers"), (busy, f"... + {busy['copies']} copies")):
        lines.append(
            f"{label:<36}{run['lag_p50_ms']:>11.1f}{run['lag_p99_ms']:>11.1f}{run['lag_max_ms']:>11.1f}"
            f"{run['peak_rss_bytes'] / mib:>13.1f}{run['copy_seconds']:>9.1f}"
        )
    growth_lag = busy["lag_p99_ms"] - quiet["lag_p99_ms"]
    growth_rss = busy["peak_rss_bytes"] - quiet["peak_rss_bytes"]
    copied = busy["copied_bytes"] / mib
    lines += [
        f"copies: {busy['copies']} x {megabytes:g} MB ({copied:.0f} MiB) in {busy['copy_seconds']:.1f} s, "
        f"{copied / max(busy['copy_seconds'], 1e-9):.0f} MiB/s",
        f"lag p99 grew {growth_lag:+.1f} ms (target <= {TARGET_LAG_P99_GROWTH_MS:.0f} ms: "
        f"{'met' if growth_lag <= TARGET_LAG_P99_GROWTH_MS else 'MISSED'}); peak RSS grew "
        f"{growth_rss / mib:+.1f} MiB (target <= {TARGET_RSS_GROWTH_BYTES / mib:.0f} MiB: "
        f"{'met' if growth_rss <= TARGET_RSS_GROWTH_BYTES else 'MISSED'}), "
        f"{growth_rss / max(busy['copies'], 1) / mib:.1f} MiB per copy of {megabytes:g} MB",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--n", type=int, default=2000, help="waiting triggers (default 2000)")
    parser.add_argument("--copies", type=int, default=20, help="results copied at once (default 20)")
    parser.add_argument("--mb", type=float, default=20.0, help="size of each result in MB (default 20)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between a trigger's polls")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after every trigger polled once")
    parser.add_argument("--json", type=Path, help="also write both runs' figures to this file")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.child:
        child_main(*arguments.child)
        return 0
    with tempfile.TemporaryDirectory(prefix="triggerer-copies-") as workdir_name:
        workdir = Path(workdir_name)
        files = workdir / "files"
        files.mkdir()
        result_file(files, arguments.mb)
        server, file_base_url = serve(files)
        try:
            with running_emulator(workdir) as base_url:
                task_ids = asyncio.run(create_tasks(base_url, arguments.n))
                env = child_environment(base_url, str(workdir / "airflow-home"))
                plan = {
                    "task_ids": task_ids,
                    "interval": arguments.interval,
                    "warmup": arguments.warmup,
                    "file_url": f"{file_base_url}/result.png",
                    "window": 2 * arguments.interval,  # each trigger polls twice, copies or not
                }
                plan_path = workdir / "plan.json"
                plan_path.write_text(json.dumps(plan))
                timeout = 2 * arguments.interval + arguments.warmup + 600
                runs = [run_child(env, plan_path, copies, timeout) for copies in (0, arguments.copies)]
        finally:
            server.shutdown()
    for line in report(runs, arguments.mb):
        print(line)
    if arguments.json:
        arguments.json.write_text(json.dumps(runs))
    failures = [failure for run in runs for failure in run["failed"]]
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
