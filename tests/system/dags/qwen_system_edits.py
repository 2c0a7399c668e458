"""
Many deferrable Qwen edits of one uploaded image, each result stored as a file: the system test's workload.

``prepare`` uploads one source image to Apikley; ``edit`` maps one ``QwenImageToImageOperator``
(deferrable unless ``params.deferrable`` says otherwise) over ``params.edits`` seeds and stores each result under
``params.output_uri``; with ``params.called_back`` each edit is called back to this deployment's receiver, and its
wait ends on the callback. Every try of an edit may be retried, and a retry resumes the Apikley task
the failed try submitted (Airflow 3.3's task state store) instead of paying for a new one; before 3.3 it
submits anew.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum

from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator

with DAG(
    dag_id="qwen_system_edits",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={
        "edits": Param(200, type="integer", minimum=1, maximum=1000),
        "output_uri": Param("file:///tmp/qwen_system_edits", type="string"),
        "deferrable": Param(True, type="boolean"),
        "called_back": Param(False, type="boolean"),
    },
    default_args={"retries": 2, "retry_delay": timedelta(seconds=2)},
    tags=["qwen", "system-test"],
):

    @task
    def prepare(params: dict[str, Any] | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        """Upload the source image once; one edit per seed, each called back to the receiver with ``called_back``."""
        from airflow_provider_qwen.api_server.urls import callback_url
        from airflow_provider_qwen.demo.images import draw_product
        from airflow_provider_qwen.hooks.apikley import ApikleyHook

        folder = "system/" + "".join(char if char.isalnum() else "-" for char in run_id or "manual")
        image_url = ApikleyHook().upload_file(draw_product("Test card", "#dfe7ef", "#c0392b"), folder, "source.png")
        return [
            {
                "image_url": image_url,
                "prompt": f"product photo, variation {seed}",
                "seed": seed,
                "deferrable": params["deferrable"],
                **({"callback_url": callback_url()} if params["called_back"] else {}),
            }
            for seed in range(params["edits"])
        ]

    QwenImageToImageOperator.partial(
        task_id="edit",
        output_format="png",
        strength=0.6,
        output_path="{{ params.output_uri }}",
    ).expand_kwargs(prepare())
