"""
Edit a few product images with Qwen image-to-image, between the data steps around them.

``plan_edits`` stands for whatever produces the work (a catalog query, a file listing); the mapped
``edit`` task submits one Apikley task per item and waits for it in the triggerer, so a hundred
edits hold no worker slot while Apikley renders; ``summarize`` gets every result back.

The second DAG shows the other shape: submit without waiting, and wait with the sensor, which
copies the results to the ``output_path`` the submitting task hands on (the ``output_uri`` param).

Both need an ``apikley_default`` connection (API key in the password) and image URLs Apikley can
fetch, passed as the ``images`` param.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum

from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from airflow_provider_qwen.sensors.apikley import ApikleyTaskSensor

EXAMPLE_IMAGES = [
    "https://files.example.org/catalog/sneaker.png",
    "https://files.example.org/catalog/backpack.png",
    "https://files.example.org/catalog/mug.png",
]

with DAG(
    dag_id="qwen_image_edit_example",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={"images": Param(EXAMPLE_IMAGES, type="array"), "style": Param("sepia, studio light", type="string")},
    # A retry resumes the Apikley task the failed try submitted (Airflow 3.3): it never pays twice.
    default_args={"retries": 2, "retry_delay": timedelta(seconds=1)},
    tags=["example", "qwen", "apikley"],
):

    @task
    def plan_edits(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """One edit per image: its prompt, a seed for reproducibility, and how strongly to edit."""
        params = params or {}
        return [
            {"image_url": url, "prompt": f"product photo, {params['style']}", "seed": index, "strength": 0.6}
            for index, url in enumerate(params["images"])
        ]

    edits = QwenImageToImageOperator.partial(
        task_id="edit",
        output_format="png",
        deferrable=True,
    ).expand_kwargs(plan_edits())

    @task
    def summarize(results: list[dict[str, Any]]) -> dict[str, str]:
        """Map each source image to its edited image (URLs expire: copy them from here)."""
        return {result["input"]["image_url"]: result["result_urls"][0] for result in results}

    summarize(edits.output)


with DAG(
    dag_id="qwen_submit_then_sense_example",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={
        "image": Param(EXAMPLE_IMAGES[0], type="string"),
        "output_uri": Param("file:///tmp/qwen_submit_then_sense", type="string", description="Where results go"),
    },
    tags=["example", "qwen", "apikley"],
):
    submit = QwenImageToImageOperator(
        task_id="submit",
        prompt="the same product on a white background",
        image_url="{{ params.image }}",
        strength=0.6,
        seed=7,
        wait_for_completion=False,
        output_path="{{ params.output_uri }}",  # checked writable now, handed on to the sensor, which copies
    )
    wait = ApikleyTaskSensor(task_id="wait", apikley_task_id=submit.output, deferrable=True)
