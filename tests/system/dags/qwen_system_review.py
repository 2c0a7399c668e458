"""
Three mapped Qwen edits of one uploaded image, each reviewed in the Airflow UI: the review's system test.

``edit`` maps three deferrable ``QwenImageToImageOperator`` over three prompts; ``review`` maps one
``ApikleyReviewOperator`` over their results; ``collect`` gets what the reviewers let through.
``qwen_system_review_timeout`` does the same with two edits and a ``response_timeout`` of 25 s.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum

from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from airflow_provider_qwen.operators.review import ApikleyReviewOperator

#: What both DAGs share: run only when triggered.
ARGUMENTS: dict[str, Any] = {
    "start_date": pendulum.datetime(2026, 1, 1, tz="UTC"),
    "schedule": None,
    "catchup": False,
    "tags": ["qwen", "system-test"],
}

with DAG(dag_id="qwen_system_review", **ARGUMENTS):

    @task
    def prepare(count: int = 3, run_id: str | None = None) -> list[dict[str, Any]]:
        """Upload the source image once; one edit per prompt."""
        from airflow_provider_qwen.demo.images import draw_product
        from airflow_provider_qwen.hooks.apikley import ApikleyHook

        folder = "review/" + "".join(char if char.isalnum() else "-" for char in run_id or "manual")
        image_url = ApikleyHook().upload_file(draw_product("Review", "#dfe7ef", "#2c7a4b"), folder, "source.png")
        return [{"image_url": image_url, "prompt": f"studio photo, variation {n}"} for n in range(count)]

    edits = QwenImageToImageOperator.partial(
        task_id="edit", output_format="png", strength=0.6, deferrable=True, poll_interval=1
    ).expand_kwargs(prepare(3))

    review = ApikleyReviewOperator.partial(task_id="review", max_review_rounds=2, poll_interval=1).expand(
        edit=edits.output
    )

    @task
    def collect(approved: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """What the review let through, as the next step gets it."""
        return list(approved)

    collect(review.output)


with DAG(dag_id="qwen_system_review_timeout", **ARGUMENTS):
    # Two edits, each asked about for 25 s at most: one answered through the REST API, one left unanswered.
    timed_edits = QwenImageToImageOperator.partial(
        task_id="edit", output_format="png", deferrable=True, poll_interval=1
    ).expand_kwargs(prepare(2))
    timed_review = ApikleyReviewOperator.partial(task_id="review", response_timeout=timedelta(seconds=25)).expand(
        edit=timed_edits.output
    )
    collect(timed_review.output)
