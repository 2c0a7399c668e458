"""
The cluster test's workload without faults, on one node or on the cluster: wall time, each component's CPU and memory.

    python -m tests.cluster.compare single    # PostgreSQL, the LocalExecutor, one process of each component
    python -m tests.cluster.compare cluster   # the cluster test's cluster (tests.cluster.cluster)

Both get the same worker slots (2 Celery workers x 3, or ``[core] parallelism`` 6) and the same
emulator; the straggler is let go at once and does not pause. Prints a Markdown table, the
figures docs/benchmarks.md puts beside the cluster test's.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from tests.cluster.cluster import WORKERS, AirflowCluster
from tests.cluster.usage import UsageSampler, deployment_groups
from tests.cluster.workload import (
    DAG_ID,
    DAGS,
    EDITS,
    WORKER_CONCURRENCY,
    WorkloadEmulator,
    create_gate_pool,
    trigger_workload,
)
from tests.system.conftest import sigterm_raises_keyboard_interrupt
from tests.system.deployment import AirflowDeployment

RUN_TIMEOUT_SECONDS = 600.0


def measure(layout: str, workdir: Path) -> list[str]:
    dags_folder = workdir / "dags"
    dags_folder.mkdir()
    for dag_file in DAGS:
        shutil.copy(dag_file, dags_folder / dag_file.name)
    with WorkloadEmulator(workdir) as emulator:
        env = {"AIRFLOW_CONN_APIKLEY_DEFAULT": emulator.airflow_connection()}
        if layout == "cluster":
            deployment = AirflowCluster(workdir, dags_folder, worker_concurrency=WORKER_CONCURRENCY, env=env)
        else:
            deployment = AirflowDeployment(workdir, dags_folder, parallelism=WORKER_CONCURRENCY * len(WORKERS), env=env)
        with deployment:
            create_gate_pool(deployment, slots=1)
            creates_before = emulator.stats()["accepted_create_tasks"]
            with UsageSampler(deployment_groups(deployment, emulator)) as usage:
                started = time.monotonic()
                run_id = trigger_workload(deployment, workdir / "output")
                state = deployment.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT_SECONDS)
                seconds = time.monotonic() - started
            creates = emulator.stats()["accepted_create_tasks"] - creates_before
    return [f"{layout}: {EDITS} edits, run {state} in {seconds:.0f} s, createTask accepted {creates}", *usage.table()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layout", choices=["single", "cluster"])
    args = parser.parse_args(argv)
    with sigterm_raises_keyboard_interrupt(), tempfile.TemporaryDirectory(prefix="qwen-compare-") as workdir:
        print("\n".join(measure(args.layout, Path(workdir))))


if __name__ == "__main__":
    main()
