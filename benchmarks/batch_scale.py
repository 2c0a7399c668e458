"""
One batch task of 20,000 edits, a worker killed halfway: what it writes, holds and resumes.

``python -m benchmarks.batch_scale [--edits 20000] [--limit 100] [--window 1] [--kill-at N] [--callbacks]``

The emulator runs as its own process with the create limit raised (``--limit`` per ``--window``
seconds), so the run takes minutes. Each phase of the task runs in a process of its own, as on a
deployment: a worker submits (``execute``) with a task state store kept in files, and is SIGKILLed
once Apikley has accepted ``--kill-at`` creates (by default halfway, in the middle of a burst); a
second worker resumes from the store and defers; a triggerer process runs the
``ApikleyBatchTrigger`` to its event; a last worker finishes (``execute_complete``) and returns the
summary. It prints creates per second against the limit, requests per item, the bytes of the
trigger's arguments, its event and the XCom value, the bytes the ledger wrote to the task state
store per item (every phase's writes, the killed worker's included) and the keys the second worker
read to resume, each process's RSS growth, and the time the second worker took to resume; it exits
non-zero when more than one item was created twice (the create in flight when the worker died) or
one was lost.

With ``--callbacks`` the items are created with the provider's callback URL: the provider's
api-server app serves the receiver (and the deliveries the trigger awaits) from a process of its
own on a PostgreSQL metadata database, Apikley calls back as each edit ends, and the trigger queries
Apikley only where a callback has not come by ``[apikley] callback_fallback_seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

from benchmarks.compare_waits import requests_by_endpoint, stage_latencies

#: The key the emulator signs its callbacks with, with ``--callbacks``.
CALLBACK_KEY = "bench-callback-key"


class FileStateStore:
    """
    Airflow 3.3's task state store, as the operator uses it, kept in files.

    Each read and write is also appended to a journal beside them (``phase read|write key bytes``),
    which a SIGKILLed worker leaves behind too: :func:`store_figures` adds it up.
    """

    def __init__(self, folder: Path, phase: str = "") -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.phase = phase or "-"
        self.bytes_written = 0

    def _path(self, key: str) -> Path:
        return self.folder / key.replace("/", "__")

    def _journal(self, operation: str, key: str, size: int) -> None:
        with (self.folder.parent / "state-journal").open("a") as journal:
            journal.write(f"{self.phase} {operation} {key} {size}\n")

    def get(self, key: str) -> Any:
        path = self._path(key)
        data = path.read_text() if path.exists() else None
        self._journal("read", key, len(data or ""))
        return None if data is None else json.loads(data)

    def set(self, key: str, value: Any) -> None:
        data = json.dumps(value)  # as Airflow measures a value against [state_store] max_value_storage_bytes
        self.bytes_written += len(data)
        partial = self._path(key).with_suffix(".partial")
        partial.write_text(data)
        partial.replace(self._path(key))
        self._journal("write", key, len(data))


def store_figures(workdir: Path) -> dict[str, int]:
    """Add up the state store's journal: bytes written by every phase, and keys each phase read."""
    figures: dict[str, int] = {"bytes written": 0}
    journal = workdir / "state-journal"
    for line in journal.read_text().splitlines() if journal.exists() else []:
        fields = line.split(" ")
        if len(fields) != 4 or not fields[3].isdigit():
            continue  # the last line of a worker killed while writing it
        phase, operation, key, size = fields
        if operation == "write":
            figures["bytes written"] += int(size)
        else:
            read = f"{phase} slot reads" if key.startswith("apikley_batch/created/") else f"{phase} reads"
            figures[read] = figures.get(read, 0) + 1
    return figures


def upload_small_image(emulator: Any) -> str:
    """Upload a 64 x 64 source image: the emulator draws each edit, and must keep up with the raised limit."""
    import base64
    import io

    import requests
    from PIL import Image

    picture = io.BytesIO()
    Image.new("RGB", (64, 64), "#c0392b").save(picture, "PNG")
    upload_base_url = json.loads(emulator.airflow_connection())["extra"]["upload_base_url"]
    response = requests.post(
        f"{upload_base_url}/api/file-base64-upload",
        json={"base64Data": base64.b64encode(picture.getvalue()).decode(), "uploadPath": "bench", "fileName": "s.png"},
        headers={"Authorization": f"Bearer {emulator.api_key}"},
        timeout=30,
    )
    response.raise_for_status()
    return str(response.json()["data"]["downloadUrl"])


def rss_kib(status: str = "VmRSS") -> int:
    """This process's resident memory (``VmRSS``), or its peak (``VmHWM``), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{status}:"):
            return int(line.split()[1])
    return 0


def operator(spec: dict[str, Any]) -> Any:
    from airflow_provider_qwen.operators.batch import QwenImageToImageBatchOperator

    inputs = [{"prompt": f"catalog shot {n}", "image_url": spec["image_url"], "seed": n} for n in range(spec["edits"])]
    return QwenImageToImageBatchOperator(
        task_id="batch",
        inputs=inputs,
        callback_url=spec.get("callback_url"),
        creates_per_window=spec["limit"],
        window_seconds=spec["window"],
        output_path=spec["output_path"],
        expected_duration=spec["edit_seconds"],
    )


def context(spec: dict[str, Any], phase: str = "") -> dict[str, Any]:
    ti = mock.Mock(dag_id="bench_batch", run_id="scale", task_id="batch", map_index=-1)
    return {"ti": ti, "task_state_store": FileStateStore(Path(spec["state"]), spec.get("phase_name") or phase)}


def phase(name: str, spec_file: Path) -> None:
    """Run one phase of the task in this process; print its figures as one JSON line."""
    from airflow.providers.common.compat.sdk import TaskDeferred

    spec = json.loads(spec_file.read_text())
    os.environ["AIRFLOW_CONN_APIKLEY_DEFAULT"] = spec["connection"]
    if name == "serve":
        serve_provider_app(spec)
        return
    task = operator(spec)
    task_context = context(spec, name)
    baseline = rss_kib()
    figures: dict[str, Any] = {}
    if name == "submit":
        try:
            task.execute(task_context)
        except TaskDeferred as deferred:
            figures["trigger_kwargs"] = deferred.trigger.serialize()[1]
        figures["state_store_bytes"] = task_context["task_state_store"].bytes_written
    elif name == "wait":
        from airflow_provider_qwen.triggers.batch import ApikleyBatchTrigger

        trigger = ApikleyBatchTrigger(**spec["trigger_kwargs"])

        async def first_event() -> Any:
            async for event in trigger.run():
                return event.payload

        figures["event"] = asyncio.run(first_event())
    else:
        figures["xcom"] = task.execute_complete(task_context, spec["event"])
    figures["rss_growth_mib"] = (rss_kib("VmHWM") - baseline) / 1024
    print(json.dumps(figures))


def serve_provider_app(spec: dict[str, Any]) -> None:
    """Serve the provider's api-server app under ``/apikley`` on ``spec["app_port"]`` until killed."""
    import uvicorn

    from tests.provider_app import mounted_provider_app

    uvicorn.run(mounted_provider_app(), host="127.0.0.1", port=spec["app_port"], log_level="warning")


def start_phase(name: str, spec: dict[str, Any], workdir: Path) -> subprocess.Popen[str]:
    """
    Start a phase in a process of its own, its output into ``<label>.out`` and ``<label>.log`` in ``workdir``.

    Files, not pipes: a phase logs a line every 50 creates, which would fill a pipe nobody reads
    until it ends, and stop it there.
    """
    label = spec.get("phase_name") or name
    spec_file = workdir / f"{label}.json"
    spec_file.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "benchmarks.batch_scale", "--phase", name, str(spec_file)]
    with (workdir / f"{label}.out").open("w") as out, (workdir / f"{label}.log").open("w") as log:
        return subprocess.Popen(command, stdout=out, stderr=log, text=True)


def phase_output(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Return what the phase ``process`` printed and logged, once it ended."""
    process.wait()
    spec_file = Path(process.args[-1])
    return spec_file.with_suffix(".out").read_text(), spec_file.with_suffix(".log").read_text()


@contextmanager
def receiving_callbacks(workdir: Path, spec: dict[str, Any], stack: ExitStack) -> Iterator[str]:
    """
    Set this process's (and so every phase's) Airflow up to take callbacks; serve the provider's app.

    Its metadata database is PostgreSQL, as on a deployment (``stack`` stops it): on SQLite, every
    delivery's writes wait for the one lock, and the receiver falls behind 100 callbacks a second.

    :return: the callback URL to create the items with.
    """
    import requests

    from tests.system.ports import free_port
    from tests.system.postgres import PostgresCluster

    port = free_port()
    database = stack.enter_context(PostgresCluster(workdir / "logs"))
    os.environ.update(
        AIRFLOW_HOME=str(workdir / "airflow"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=database.sqlalchemy_url,
        AIRFLOW__DATABASE__EXTERNAL_DB_MANAGERS="airflow_provider_qwen.api_server.db_manager.ApikleyDBManager",
        AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{port}",
        AIRFLOW_CONN_APIKLEY_DEFAULT=spec["connection"],
    )
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, stdout=subprocess.DEVNULL)
    server = start_phase("serve", {**spec, "app_port": port}, workdir)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/apikley/callback", timeout=1)
                break
            except requests.ConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    raise RuntimeError(f"the provider's app did not start: {phase_output(server)[1][-3000:]}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/apikley/callback"
    finally:
        server.terminate()
        server.wait()


def finish_phase(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = phase_output(process)
    if process.returncode != 0:
        raise RuntimeError(f"a phase failed: {err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def run_phase(name: str, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    return finish_phase(start_phase(name, spec, workdir))


def run(args: argparse.Namespace, workdir: Path) -> int:
    from tests.system.deployment import EmulatorProcess

    with ExitStack() as stack:
        emulator = stack.enter_context(
            EmulatorProcess(
                workdir,
                latency=stage_latencies(args.edit_seconds),
                rate_limit=args.limit,
                rate_window=args.window,
                callback_key=CALLBACK_KEY if args.callbacks else None,
                extra_args=("--credits", str(args.edits * 2)),
            )
        )
        spec = {
            "connection": emulator.airflow_connection(),
            "image_url": upload_small_image(emulator),
            "edits": args.edits,
            "limit": args.limit,
            "window": args.window,
            "edit_seconds": args.edit_seconds,
            "output_path": f"file://{workdir / 'output'}",
            "state": str(workdir / "state"),
        }
        if args.callbacks:
            spec["callback_url"] = stack.enter_context(receiving_callbacks(workdir, spec, stack))
        before = emulator.stats()
        started = time.monotonic()

        # a worker, SIGKILLed once Apikley has accepted --kill-at of its creates
        killed = start_phase("submit", spec, workdir)
        while emulator.stats()["accepted_create_tasks"] - before["accepted_create_tasks"] < args.kill_at:
            if killed.poll() is not None:
                raise RuntimeError("the first worker ended before it was to be killed")
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        killed_at = time.monotonic()
        at_kill = emulator.stats()["accepted_create_tasks"] - before["accepted_create_tasks"]

        retry = start_phase("submit", {**spec, "phase_name": "resume"}, workdir)  # the retry, on another worker
        while emulator.stats()["accepted_create_tasks"] - before["accepted_create_tasks"] <= at_kill:
            time.sleep(0.05)
        resume_seconds = time.monotonic() - killed_at  # its first create: started, read the ledger, went on
        submitted = finish_phase(retry)
        submit_seconds = time.monotonic() - started
        creates = emulator.stats()["accepted_create_tasks"] - before["accepted_create_tasks"]
        waited = run_phase("wait", {**spec, "trigger_kwargs": submitted["trigger_kwargs"]}, workdir)
        finished = run_phase("complete", {**spec, "event": waited["event"]}, workdir)
        total_seconds = time.monotonic() - started
        after = emulator.stats()

    from airflow_provider_qwen.batch_ledger import LEDGER_PAGE
    from airflow_provider_qwen.batch_manifest import read_batch_manifest

    summary = finished["xcom"]
    if isinstance(summary, list):  # up to 1,000 items the XCom value is the items themselves
        records, items, states = len(summary), len(summary), dict(Counter(item["state"] for item in summary))
    else:
        records = sum(1 for _ in read_batch_manifest(summary["manifest"]))
        items, states = summary["items"], summary["states"]
    by_endpoint = requests_by_endpoint(before, after)
    accepted = after["accepted_create_tasks"] - before["accepted_create_tasks"]
    floor = max(0, args.edits - args.limit) * args.window / args.limit
    sizes = {
        "trigger kwargs": len(json.dumps(submitted["trigger_kwargs"])),
        "trigger event": len(json.dumps(waited["event"])),
        "XCom value": len(json.dumps(summary)),
    }
    store_bytes = submitted["state_store_bytes"]  # the retry's
    ledger = store_figures(workdir)
    print(f"\n{args.edits} edits in one batch task; limit {args.limit} creates per {args.window:g} s;", end=" ")
    print(f"edits of {args.edit_seconds:g} s; worker SIGKILLed after {at_kill} accepted creates;", end=" ")
    print("Apikley calling back" if args.callbacks else "polling")
    print("| figure | value |")
    print("|---|---:|")
    print(f"| submission, both workers | {submit_seconds:.1f} s (floor at the limit: {floor:.1f} s) |")
    print(f"| creates per second against the limit | {floor / submit_seconds * 100:.1f} % |")
    print(f"| second worker: from the kill to its first create | {resume_seconds:.1f} s |")
    print(f"| createTask accepted for {args.edits} items | {accepted} ({creates} when the second worker deferred) |")
    print(f"| items created twice | {accepted - args.edits} |")
    api = by_endpoint.get("createTask", 0) + by_endpoint.get("recordInfo", 0)
    print(f"| API requests per item (createTask + recordInfo) | {api / args.edits:.3f} |")
    for endpoint, count in sorted(by_endpoint.items()):
        print(f"| {endpoint} requests per item | {count / args.edits:.3f} |")
    for name, size in sizes.items():
        print(f"| {name} | {size:,} bytes |")
    per_item = store_bytes / max(args.edits - at_kill, 1)
    print(f"| task state store written per item (second worker) | {per_item:.0f} bytes |")
    print(f"| ledger bytes written per item (both workers and the last) | {ledger['bytes written'] / args.edits:.0f} |")
    pages = -(-args.edits // LEDGER_PAGE)
    print(f"| ledger keys read on resume | {ledger.get('resume reads', 0)} (the batch has {pages} pages) |")
    print(f"| created slots read on resume | {ledger.get('resume slot reads', 0)} |")
    growth = f"{submitted['rss_growth_mib']:.1f} / {finished['rss_growth_mib']:.1f}"
    print(f"| worker RSS growth: submit / complete | {growth} MiB |")
    print(f"| triggerer RSS growth | {waited['rss_growth_mib']:.1f} MiB |")
    if args.callbacks:
        taken = after["api_codes"].get("callback taken", 0) - before["api_codes"].get("callback taken", 0)
        print(f"| callbacks the receiver took | {taken} |")
    print(f"| all ended after | {total_seconds:.1f} s |")
    print(f"| items by state | {states} |")
    problems = []
    if not args.edits <= accepted <= args.edits + 1:  # one create may be in flight when the worker dies
        problems.append(f"{accepted} creates accepted for {args.edits} items")
    if records != args.edits or items != args.edits:
        problems.append(f"the manifest holds {records} records for {args.edits} items")
    for problem in problems:
        print(f"CHECK FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=20_000, help="edits in the batch (default: 20000)")
    parser.add_argument("--limit", type=int, default=100, help="creates the account may make per window (default: 100)")
    parser.add_argument("--window", type=float, default=1.0, help="the limit's window in seconds (default: 1)")
    parser.add_argument("--edit-seconds", type=float, default=2.0, help="how long an emulated edit takes (default: 2)")
    parser.add_argument(
        "--kill-at",
        type=int,
        help="accepted creates before the kill (default: halfway, in the middle of a burst of --limit creates)",
    )
    parser.add_argument("--callbacks", action="store_true", help="create the items with the provider's callback URL")
    parser.add_argument("--phase", nargs=2, metavar=("PHASE", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        phase(args.phase[0], Path(args.phase[1]))
        return 0
    if args.kill_at is None:
        args.kill_at = args.edits // 2 // args.limit * args.limit + args.limit // 2
    with tempfile.TemporaryDirectory(prefix="batch-scale-") as workdir:
        return run(args, Path(workdir))


if __name__ == "__main__":
    sys.exit(main())
