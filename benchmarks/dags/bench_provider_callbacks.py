"""
Benchmark workload (g): workload (a), each edit called back to this deployment's receiver.

Each mapped ``QwenImageToImageOperator`` submits with ``callback_url=callback_url()`` and defers to
``ApikleyTaskTrigger``, which ends the task when the receiver is called back, asking Apikley only
every ``[apikley] callback_fallback_seconds`` for a callback that never came.
``python -m benchmarks.compare_waits`` runs it.

Needs an ``apikley_default`` connection with a ``webhook_secret``, ``[api] base_url`` Apikley can
reach, and an ``image_url`` Apikley can fetch.
"""

from __future__ import annotations

from typing import Any

import pendulum

from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_qwen.api_server.urls import callback_url
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator

with DAG(
    dag_id="bench_provider_callbacks",
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
        callback_url=callback_url(),
    ).expand_kwargs(plan_edits())
