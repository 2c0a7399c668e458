"""
Mapped edits on the deployment whose waits end on Apikley's callback, with some callbacks lost.

Each edit costs the create and the receiver's one re-read; the triggerer asks Apikley only about
an edit whose callback never came, once, after ``[apikley] callback_fallback_seconds``.
"""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import datetime

import pytest

from tests.system.conftest import CALLBACK_FALLBACK_SECONDS, GENERATION_LATENCY, MEASUREMENTS_SECTION
from tests.system.deployment import AirflowDeployment, EmulatorProcess

pytestmark = [pytest.mark.system, pytest.mark.slow]

DAG_ID = "qwen_system_edits"
CALLED_BACK_EDITS = 20
#: The fraction of callbacks the emulator never sends.
LOST = 0.1
RUN_TIMEOUT_SECONDS = 300.0
#: Seconds each edit spends waiting, queuing and generating (±20 %): well within the fallback's interval.
QUICK_EDITS = (0.5, 1.0, 1.5)


def ended_after_completion(deployment: AirflowDeployment, emulator: EmulatorProcess, run_id: str) -> list[float]:
    """Seconds from each edit's ``completeTime`` at Apikley to the end of the Airflow task that waited for it."""
    rows = deployment.sql(
        "SELECT map_index, value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = 'edit' "
        "AND key = 'apikley_task_id'",
        (DAG_ID, run_id),
    )
    task_of = {map_index: value for map_index, value in rows}
    completed = {task["taskId"]: task["completeTime"] / 1000 for task in emulator.tasks() if task["completeTime"]}
    ends = {
        ti["map_index"]: datetime.fromisoformat(ti["end_date"]).timestamp()
        for ti in deployment.task_instances(DAG_ID, run_id)
        if ti["task_id"] == "edit"
    }
    return [ends[index] - completed[task_of[index]] for index in sorted(ends)]


def test_mapped_edits_end_on_their_callbacks_and_a_lost_one_on_the_fallback(
    deployment, emulator, system_workdir, measurement
):
    # one delivery per edit here (the shared emulator delivers each twice for the other tests)
    emulator.configure(callback_twice=False, callback_drop=LOST, latency=QUICK_EDITS)
    try:
        before = emulator.stats()
        run_id = deployment.trigger(
            DAG_ID,
            {"edits": CALLED_BACK_EDITS, "output_uri": f"file://{system_workdir}/called-back", "called_back": True},
        )
        state = deployment.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT_SECONDS)
        after = emulator.stats()
    finally:
        emulator.configure(callback_twice=True, callback_drop=0.0, latency=GENERATION_LATENCY)
    edits = [ti for ti in deployment.task_instances(DAG_ID, run_id) if ti["task_id"] == "edit"]
    assert (state, Counter(ti["state"] for ti in edits)) == ("success", {"success": CALLED_BACK_EDITS})

    codes = Counter(after["api_codes"]) - Counter(before["api_codes"])
    creates, status_queries = codes["createTask 200"], codes["recordInfo 200"]
    taken, lost = codes["callback taken"], codes["callback dropped"]
    assert creates == CALLED_BACK_EDITS
    assert taken + lost == CALLED_BACK_EDITS
    # the receiver re-read each delivered edit once; the triggers asked only about the lost ones, once each
    assert status_queries == taken + lost, f"{status_queries} status queries: {taken} delivered, {lost} lost"
    per_edit = (creates + status_queries) / CALLED_BACK_EDITS
    assert per_edit <= 2.05

    delays = ended_after_completion(deployment, emulator, run_id)
    assert len(delays) == CALLED_BACK_EDITS
    measurement(
        MEASUREMENTS_SECTION,
        f"{CALLED_BACK_EDITS} mapped edits ending on their callbacks, {lost} callback(s) lost: {per_edit:.2f} "
        f"Apikley requests per edit ({creates} creates, {status_queries} status queries: {taken} by the receiver, "
        f"{lost} by the fallback after {CALLBACK_FALLBACK_SECONDS} s); Apikley's completeTime to the task's end: "
        f"p50 {statistics.median(delays):.2f} s, max {max(delays):.2f} s",
    )
