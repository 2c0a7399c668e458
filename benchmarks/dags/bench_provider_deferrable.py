"""
Benchmark workload (a): N mapped edits with this provider's deferrable operator.

Each mapped ``QwenImageToImageOperator`` submits on a worker, checks the task once and defers to
``ApikleyTaskTrigger``, which polls ``recordInfo`` every ``POLL_SECONDS`` in the triggerer; the
worker slot is free while Apikley renders. ``python -m benchmarks.compare_waits`` runs it.

Needs an ``apikley_default`` connection and an ``image_url`` Apikley can fetch.
"""

from __future__ import annotations

from typing import Any

import pendulum

from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator

#: Seconds between two status queries of one edit; the same in every benchmark DAG.
POLL_SECONDS = 2.0

with DAG(
    dag_id="bench_provider_deferrable",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={
        "edits": Param(50, type="integer", minimum=1, maximum=1000),
        "image_url": Param("https://files.example.org/catalog/sneaker.png", type="string"),
    },
    tags=["benchmark", "qwen"],
):

    @task
    def plan_edits(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """One edit of the same image per seed."""
        params = params or {}
        return [
            {"image_url": params["image_url"], "prompt": f"product photo, variation {seed}", "seed": seed}
            for seed in range(params["edits"])
        ]

    QwenImageToImageOperator.partial(
        task_id="edit",
        strength=0.6,
        output_format="png",
        deferrable=True,
        poll_interval=POLL_SECONDS,
    ).expand_kwargs(plan_edits())
