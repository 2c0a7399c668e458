"""
Benchmark workload (a): N mapped edits with this provider's deferrable operator.

Each mapped ``QwenImageToImageOperator``, with its defaults, submits on a worker and defers to
``ApikleyTaskTrigger``: the triggerer asks ``recordInfo`` once an answer is due (what it learned
edits take), then at Apikley's advised cadence, and ends the task itself when the edit succeeds.
The worker slot is free while Apikley renders. ``python -m benchmarks.compare_waits`` runs it.

Needs an ``apikley_default`` connection and an ``image_url`` Apikley can fetch.
"""

from __future__ import annotations

from typing import Any

import pendulum

from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator

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
    ).expand_kwargs(plan_edits())
