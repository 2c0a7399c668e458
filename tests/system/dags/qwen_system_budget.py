"""
Twenty mapped edits of one uploaded image under a run budget of ten edits' credits: the budget test's workload.

``prepare`` uploads one source image to Apikley; ``edit`` maps one deferrable ``QwenImageToImageOperator``
over ``params.edits`` seeds. ``run_max_credits`` (``params.run_max_credits``, set once in ``default_args``)
is the budget every edit of the run shares, kept by the provider's ledger on the api-server: the edits
that would go past it fail before they are paid for, naming it. No edit is retried.
"""

from __future__ import annotations

from typing import Any

import pendulum

from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator

#: The run's budget: ten edits at the emulator's price of 1 credit.
RUN_MAX_CREDITS = 10

with DAG(
    dag_id="qwen_system_budget",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={"edits": Param(20, type="integer", minimum=1, maximum=100)},
    default_args={"retries": 0, "run_max_credits": RUN_MAX_CREDITS},
    tags=["qwen", "system-test"],
):

    @task
    def prepare(params: dict[str, Any] | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        """Upload the source image once; one edit per seed."""
        from airflow_provider_qwen.demo.images import draw_product
        from airflow_provider_qwen.hooks.apikley import ApikleyHook

        folder = "budget/" + "".join(char if char.isalnum() else "-" for char in run_id or "manual")
        image_url = ApikleyHook().upload_file(draw_product("Budget", "#dfe7ef", "#c0392b"), folder, "source.png")
        seeds = range(params["edits"])
        return [{"image_url": image_url, "prompt": f"budget variation {seed}", "seed": seed} for seed in seeds]

    QwenImageToImageOperator.partial(task_id="edit", strength=0.6, deferrable=True).expand_kwargs(prepare())
