"""
One batch task of N edits against an emulator enforcing Apikley's create limit: how close to it, at what cost.

``python -m benchmarks.batch_rate [--edits 1000] [--limit 20] [--window 10] [--edit-seconds 6]``

The emulator runs as its own process with the account's limit (``--limit`` creates per
``--window`` seconds; more are answered 429). ``QwenImageToImageBatchOperator.execute`` submits
the batch in this process, as a worker would, until it defers; its ``ApikleyBatchTrigger`` then
runs to its event in an event loop here, as the triggerer would; ``execute_complete`` reads the
event. It prints the submission's rate against the limit, the share of creates answered 429, the
HTTP requests per edit by endpoint, and how the edits ended; it exits non-zero when an edit was
lost or paid twice.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_provider_qwen.demo.images import draw_product
from benchmarks.compare_waits import requests_by_endpoint, stage_latencies
from tests.system.deployment import EmulatorProcess


def upload_source_image(emulator: EmulatorProcess) -> str:
    upload_base_url = json.loads(emulator.airflow_connection())["extra"]["upload_base_url"]
    response = requests.post(
        f"{upload_base_url}/api/file-base64-upload",
        json={
            "base64Data": base64.b64encode(draw_product("Batch", "#dfe7ef", "#c0392b")).decode(),
            "uploadPath": "bench",
            "fileName": "source.png",
        },
        headers={"Authorization": f"Bearer {emulator.api_key}"},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()["data"]["downloadUrl"]


async def first_event(trigger: Any) -> Any:
    async for event in trigger.run():
        return event.payload
    raise RuntimeError("the batch trigger fired no event")


def run(args: argparse.Namespace, workdir: Path) -> int:
    import os

    from airflow_provider_qwen.operators.batch import QwenImageToImageBatchOperator

    with EmulatorProcess(
        workdir,
        latency=stage_latencies(args.edit_seconds),
        rate_limit=args.limit,
        rate_window=args.window,
        extra_args=("--credits", str(args.edits * 2)),
    ) as emulator:
        os.environ["AIRFLOW_CONN_APIKLEY_DEFAULT"] = emulator.airflow_connection()
        image_url = upload_source_image(emulator)
        inputs = [{"prompt": f"catalog shot {n}", "image_url": image_url, "seed": n} for n in range(args.edits)]
        operator = QwenImageToImageBatchOperator(
            task_id="batch", inputs=inputs, creates_per_window=args.limit, window_seconds=args.window
        )
        before = emulator.stats()
        started = time.monotonic()
        try:
            operator.execute({"ti": None, "task_state_store": None})
            raise RuntimeError("the batch operator did not defer")
        except TaskDeferred as deferred:
            trigger = deferred.trigger
        submit_seconds = time.monotonic() - started
        submitted = emulator.stats()
        results = operator.execute_complete({"ti": None}, asyncio.run(first_event(trigger)))
        total_seconds = time.monotonic() - started
        after = emulator.stats()

    by_endpoint = requests_by_endpoint(before, after)
    refused = sum(
        count - before["api_codes"].get(key, 0) for key, count in after["api_codes"].items() if key == "createTask 429"
    )
    creates = by_endpoint.get("createTask", 0)
    accepted = after["accepted_create_tasks"] - before["accepted_create_tasks"]
    # The first window's worth goes out at once; the rest at the limit's pace.
    floor = max(0, args.edits - args.limit) * args.window / args.limit
    pace = floor / max(submit_seconds, 1e-9) if floor else 1.0
    states: dict[str, int] = {}
    for result in results:
        states[result["state"]] = states.get(result["state"], 0) + 1
    print(f"\n{args.edits} edits in one batch task; limit {args.limit} creates per {args.window:g} s;", end=" ")
    print(f"edits of {args.edit_seconds:g} s")
    print("| figure | value |")
    print("|---|---:|")
    print(f"| submission | {submit_seconds:.1f} s (floor at the limit: {floor:.1f} s) |")
    print(f"| submission pace against the limit | {pace * 100:.1f} % |")
    print(f"| createTask answered 429 | {refused} of {creates} ({refused / max(creates, 1) * 100:.2f} %) |")
    during = submitted["api_codes"].get("recordInfo 200", 0) - before["api_codes"].get("recordInfo 200", 0)
    print(f"| recordInfo during submission | {during} |")
    for endpoint, count in sorted(by_endpoint.items()):
        print(f"| {endpoint} requests per edit | {count / args.edits:.3f} |")
    print(f"| requests per edit, all | {sum(by_endpoint.values()) / args.edits:.3f} |")
    print(f"| all ended after | {total_seconds:.1f} s |")
    print(f"| edits by state | {states} |")
    problems = []
    if accepted != args.edits:
        problems.append(f"{accepted} creates accepted for {args.edits} edits")
    if len(results) != args.edits or [result["index"] for result in results] != list(range(args.edits)):
        problems.append("results are not one per input, in input order")
    for problem in problems:
        print(f"CHECK FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch_rate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=1000, help="edits in the batch (default: 1000)")
    parser.add_argument("--limit", type=int, default=20, help="creates the account may make per window (default: 20)")
    parser.add_argument("--window", type=float, default=10.0, help="the limit's window in seconds (default: 10)")
    parser.add_argument("--edit-seconds", type=float, default=6.0, help="how long an emulated edit takes (default: 6)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="batch-rate-") as workdir:
        return run(args, Path(workdir))


if __name__ == "__main__":
    sys.exit(main())
