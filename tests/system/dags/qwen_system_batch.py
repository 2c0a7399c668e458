"""
A catalog of edits in one batch task, every result stored: the system test kills its worker midway through submitting.

``prepare`` uploads one source image; ``batch`` submits ``params.edits`` edits of it at 10 creates
per 2 s, waits for them in one trigger and stores each result under ``params.output_uri``. A retry
resumes the submitted items from the task state store (Airflow 3.3) instead of paying for them again;
before 3.3 it submits the whole batch anew.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum

from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_qwen.operators.batch import QwenImageToImageBatchOperator

with DAG(
    dag_id="qwen_system_batch",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={
        "edits": Param(40, type="integer", minimum=1, maximum=1000),
        "output_uri": Param("file:///tmp/qwen_system_batch", type="string"),
    },
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
    tags=["qwen", "system-test"],
):

    @task
    def prepare(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Upload the source image once; one edit per seed."""
        from airflow_provider_qwen.demo.images import draw_product
        from airflow_provider_qwen.hooks.apikley import ApikleyHook

        image_url = ApikleyHook().upload_file(draw_product("Batch", "#f4ecf7", "#2980b9"), "system/batch", "source.png")
        return [
            {"image_url": image_url, "prompt": f"catalog shot {seed}", "seed": seed} for seed in range(params["edits"])
        ]

    QwenImageToImageBatchOperator(
        task_id="batch",
        inputs=prepare(),
        creates_per_window=10,
        window_seconds=2.0,
        output_path="{{ params.output_uri }}",
    )
