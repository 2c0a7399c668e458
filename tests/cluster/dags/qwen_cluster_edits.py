"""
The cluster test's workload: mapped single edits and catalog batches in one run, every result under one shared folder.

``prepare`` uploads one source image and makes ``params.single_edits`` single edits of it, and
``catalogs`` makes ``params.batches`` catalogs of ``params.batch_size`` more. ``edit`` maps a
deferrable ``QwenImageToImageOperator`` over the singles, ``catalog`` maps
``QwenImageToImageBatchOperator`` over the catalogs, and ``straggler`` is one more single edit,
held in pool ``qwen_cluster_gate`` until the test gives the pool a slot; its first try pauses
``params.straggler_pause`` seconds between submitting and deferring: the moment the test kills
its worker. Every edit asks Apikley to call back through the load balancer (``[api] base_url``)
and stores its result under ``params.output_uri``, standing for shared object storage.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pendulum

from airflow.providers.common.compat.sdk import DAG, Asset, Param, get_current_context, task

from airflow_provider_qwen.api_server.asset_events import default_asset_uri
from airflow_provider_qwen.api_server.urls import callback_url
from airflow_provider_qwen.models import QWEN_IMAGE_TO_IMAGE
from airflow_provider_qwen.operators.batch import QwenImageToImageBatchOperator
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator

#: The pool that holds ``straggler`` back: the test creates it with no slot, and gives it one.
GATE_POOL = "qwen_cluster_gate"
#: What the callback receiver updates for each finished edit; a DAG must use it for Airflow to know it.
FINISHED_EDITS = Asset(default_asset_uri(QWEN_IMAGE_TO_IMAGE))


def edit_input(image_url: str, seed: int) -> dict[str, Any]:
    return {"image_url": image_url, "prompt": f"product photo, variation {seed}", "seed": seed}


class PausingEdit(QwenImageToImageOperator):
    """A single edit whose first try pauses between submitting (its task id saved) and deferring."""

    def defer(self, **kwargs: Any) -> None:
        context = get_current_context()
        if context["ti"].try_number == 1:
            self.log.info("Pausing %s s before deferring", context["params"]["straggler_pause"])
            time.sleep(context["params"]["straggler_pause"])
        super().defer(**kwargs)


with DAG(
    dag_id="qwen_cluster_edits",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={
        "single_edits": Param(120, type="integer", minimum=1, maximum=1000),
        "batches": Param(2, type="integer", minimum=0, maximum=10),
        "batch_size": Param(40, type="integer", minimum=1, maximum=1000),
        "straggler_pause": Param(0, type="integer", minimum=0, maximum=600),
        "output_uri": Param("file:///tmp/qwen_cluster_edits", type="string"),
    },
    default_args={"retries": 2, "retry_delay": timedelta(seconds=2)},
    tags=["qwen", "cluster-test"],
):

    @task(inlets=[FINISHED_EDITS])
    def prepare(params: dict[str, Any] | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        """Upload the source image once; one single edit per seed."""
        from airflow_provider_qwen.demo.images import draw_product
        from airflow_provider_qwen.hooks.apikley import ApikleyHook

        folder = "cluster/" + "".join(char if char.isalnum() else "-" for char in run_id or "manual")
        image_url = ApikleyHook().upload_file(draw_product("Cluster", "#e9f7ef", "#d35400"), folder, "source.png")
        return [edit_input(image_url, seed) for seed in range(params["single_edits"])]

    @task
    def catalogs(singles: list[dict[str, Any]], params: dict[str, Any] | None = None) -> list[list[dict[str, Any]]]:
        """The catalogs, of the same image, with the seeds after the singles'."""
        image_url, first, size = singles[0]["image_url"], len(singles), params["batch_size"]
        return [
            [edit_input(image_url, first + batch * size + item) for item in range(size)]
            for batch in range(params["batches"])
        ]

    prepared = prepare()
    # Built when the DAG is parsed, from [api] base_url: the load balancer in front of the api-servers.
    callbacks = callback_url()

    QwenImageToImageOperator.partial(
        task_id="edit",
        deferrable=True,
        strength=0.6,
        output_format="png",
        output_path="{{ params.output_uri }}",
        callback_url=callbacks,
    ).expand_kwargs(prepared)

    QwenImageToImageBatchOperator.partial(
        task_id="catalog",
        creates_per_window=10,
        window_seconds=2.0,
        output_path="{{ params.output_uri }}",
        # the single edits are source-<map index>.png in the same folder: each catalog's items are named apart
        result_name="{source_stem}-catalog{{ ti.map_index }}-{index}",
        callback_url=callbacks,
    ).expand(inputs=catalogs(prepared))

    prepared >> PausingEdit(
        task_id="straggler",
        pool=GATE_POOL,
        deferrable=True,
        image_url="{{ ti.xcom_pull(task_ids='prepare')[0]['image_url'] }}",
        prompt="product photo, the straggler",
        seed=100_000,
        output_format="png",
        output_path="{{ params.output_uri }}",
        callback_url=callbacks,
    )
