"""
Deferrable edits that end in the triggerer, and the tasks downstream of them that read and map over their results.

No ``output_path``: nothing is left for a worker once an edit succeeds, so the triggerer pushes the
result and ends the task. ``check`` then sees the same dicts a worker would have returned, and
``per_field`` maps over one edit's result, which needs the mapped length a worker records.
"""

from __future__ import annotations

from typing import Any

import pendulum

from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator

with DAG(
    dag_id="qwen_system_triggerer_ends",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={"edits": Param(10, type="integer", minimum=1, maximum=100)},
    tags=["qwen", "system-test"],
):

    @task
    def prepare(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Upload the source image once; one edit per seed."""
        from airflow_provider_qwen.demo_images import draw_product
        from airflow_provider_qwen.hooks.apikley import ApikleyHook

        image_url = ApikleyHook().upload_file(draw_product("Ends", "#eef", "#16a085"), "system/ends", "source.png")
        return [
            {"image_url": image_url, "prompt": f"variation {seed}", "seed": seed} for seed in range(params["edits"])
        ]

    sources = prepare()
    edits = QwenImageToImageOperator.partial(task_id="edit", deferrable=True).expand_kwargs(sources)

    single = QwenImageToImageOperator(
        task_id="single",
        image_url="{{ ti.xcom_pull(task_ids='prepare')[0]['image_url'] }}",
        prompt="one more",
        deferrable=True,
    )

    @task
    def check(results: list[dict[str, Any]], one: dict[str, Any]) -> int:
        """Every result is the dict a worker returns, whichever side ended the task."""
        for result in [*results, one]:
            assert isinstance(result, dict), f"{type(result).__name__}: {result!r}"
            assert result["state"] == "success" and result["result_urls"], result
        return len(results)

    @task
    def per_field(field: Any) -> str:
        """One mapped task per (key, value) of the single edit's result."""
        return str(field[0])

    sources >> single
    check(edits.output, single.output)
    per_field.expand(field=single.output)
