"""
A run budget on the deployment: twenty mapped edits share ten edits' credits, through the ledger on the api-server.

``dags/qwen_system_budget.py`` maps twenty deferrable edits with ``run_max_credits`` of ten edits'
credits set once in ``default_args``. The edits start together (four worker slots) and race for the
budget; the ledger decides their reservations one at a time on PostgreSQL. The emulator's balance
must move by at most the budget, the edits over it must fail before paying with a message naming
the budget, and the ledger must end with exactly what was charged spent and nothing in flight.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.system.conftest import MEASUREMENTS_SECTION
from tests.system.deployment import AirflowDeployment, EmulatorProcess

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.newest_line]

DAG_ID = "qwen_system_budget"
EDITS = 20
#: The DAG's ``run_max_credits``: ten edits at the emulator's price of 1 credit each.
RUN_MAX_CREDITS = 10
RUN_TIMEOUT_SECONDS = 600.0


def test_twenty_mapped_edits_under_a_run_budget_of_ten_edits_pay_for_ten_and_the_rest_fail_before_paying(
    deployment: AirflowDeployment, emulator: EmulatorProcess, system_workdir: Path, measurement
):
    known_tasks = {task["taskId"] for task in emulator.tasks()}
    credits_before = emulator.stats()["credits"]
    started = time.monotonic()
    run_id = deployment.trigger(DAG_ID, {"edits": EDITS})
    state = deployment.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT_SECONDS)
    wall_seconds = time.monotonic() - started

    created = [
        task
        for task in emulator.tasks()
        if task["taskId"] not in known_tasks and task["request"]["input"]["prompt"].startswith("budget variation")
    ]
    spent = credits_before - emulator.stats()["credits"]
    assert spent <= RUN_MAX_CREDITS, f"the edits spent {spent} credits, past the run's budget of {RUN_MAX_CREDITS}"
    assert len(created) == RUN_MAX_CREDITS  # every edit within the budget went through

    edits = [ti for ti in deployment.task_instances(DAG_ID, run_id) if ti["task_id"] == "edit"]
    assert Counter(ti["state"] for ti in edits) == {"success": RUN_MAX_CREDITS, "failed": EDITS - RUN_MAX_CREDITS}
    assert state == "failed"  # the refused edits fail the run
    for ti in edits:
        if ti["state"] == "failed":
            log = task_log(system_workdir, run_id, ti["map_index"])
            assert "ApikleyBudgetExceededError" in log, log[-2000:]
            assert (
                f"Over budget: the run's budget 'default' (run_max_credits of run {run_id} of DAG {DAG_ID}) is "
                f"{RUN_MAX_CREDITS} credits"
            ) in log
            assert "Created Apikley task" not in log  # refused before paying

    ledger = deployment.sql(
        "SELECT (SELECT coalesce(sum(credits), 0) FROM apikley_budget_task t WHERE t.budget_key = b.budget_key), "
        "(SELECT count(*) FROM apikley_budget_reservation r WHERE r.budget_key = b.budget_key "
        "AND r.settled_at IS NULL) FROM apikley_budget b WHERE b.dag_id = %s AND b.run_id = %s",
        (DAG_ID, run_id),
    )
    assert ledger == [(spent, 0)]  # spent exactly what Apikley charged, nothing left in flight
    measurement(
        MEASUREMENTS_SECTION,
        f"Run budget: {EDITS} mapped edits under {RUN_MAX_CREDITS} credits paid {spent:g} credits for "
        f"{len(created)} edits, run done {wall_seconds:.0f} s after triggering",
    )


def task_log(system_workdir: Path, run_id: str, map_index: int) -> str:
    """The text of the first try's log of mapped edit ``map_index`` of the run."""
    logs = system_workdir / "airflow-home" / "logs" / f"dag_id={DAG_ID}"
    (path,) = [
        path
        for path in logs.rglob("attempt=1.log")
        if f"run_id={run_id}" in str(path) and f"map_index={map_index}" in path.parts[-2]
    ]
    return path.read_text()
