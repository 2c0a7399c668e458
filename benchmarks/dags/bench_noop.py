"""
Benchmark floor (e): N mapped ``PythonOperator`` tasks that return at once, shaped like the edit DAGs.

What Airflow itself takes to schedule, start and finish N mapped task instances on a deployment,
with no edit and no wait: ``python -m benchmarks.compare_waits`` runs it beside the edits, on the same
deployment, so the provider's share of a run can be told from Airflow's.
"""

from __future__ import annotations

from typing import Any

import pendulum

from airflow.providers.common.compat.sdk import DAG, Param, task
from airflow.providers.standard.operators.python import PythonOperator


def return_at_once(seed: int) -> dict[str, Any]:
    """Do nothing, as fast as a task can."""
    return {"seed": seed}


with DAG(
    dag_id="bench_noop",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={
        "edits": Param(50, type="integer", minimum=1, maximum=1000),
        "image_url": Param("https://files.example.org/catalog/sneaker.png", type="string"),
    },
    tags=["benchmark", "floor"],
):

    @task
    def plan_edits(params: dict[str, Any] | None = None) -> list[list[int]]:
        """One item per seed, as the edit DAGs plan theirs."""
        return [[seed] for seed in range((params or {})["edits"])]

    PythonOperator.partial(task_id="noop", python_callable=return_at_once).expand(op_args=plan_edits())
