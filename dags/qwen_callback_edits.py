"""
Event-driven edits: submit without waiting, and let Apikley's callbacks start the next step.

``qwen_callback_producer`` submits one edit per image with a callback URL and returns at once: no
worker slot, no trigger and no status query waits for the edits. When an edit ends, Apikley calls
the provider's receiver on the Airflow api-server (``<api-server>/apikley/callback``), which checks
the signature, reads the task's state from Apikley and records an event of the asset
``apikley://qwen/image-to-image``.

``qwen_callback_consumer`` is scheduled on that asset, partitioned by Apikley task id: it runs once
per finished edit, copies its results into ``QWEN_EDITS_OUTPUT_URI`` and updates the outlet asset
there. (Airflow 3.1 has no partitioned schedules: events that arrive close together share a run,
and each edit is still copied once; one that arrives while the scheduler creates a run waits for
the next event, apache/airflow#62501, fixed in 3.2.)

Apikley must reach the api-server: set ``[api] base_url`` to its public URL, and the connection's
``webhook_secret`` extra to the webhook HMAC key: the receiver refuses unsigned callbacks unless
``[apikley] allow_unsigned_callbacks`` says otherwise.
Callbacks can be lost: an edit that never calls back can still be waited for with
``ApikleyTaskSensor`` and its Apikley task id.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pendulum

from airflow.providers.common.compat.sdk import DAG, Asset, ObjectStoragePath, Param, task

try:
    from airflow.sdk import PartitionedAssetTimetable
except ImportError:  # Airflow 3.1
    PartitionedAssetTimetable = None

from airflow_provider_qwen.api_server.asset_events import default_asset_uri
from airflow_provider_qwen.api_server.urls import callback_url
from airflow_provider_qwen.models import QWEN_IMAGE_TO_IMAGE
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from airflow_provider_qwen.storage import result_destination

#: What the receiver updates for every finished edit of the model.
FINISHED_EDITS = Asset(default_asset_uri(QWEN_IMAGE_TO_IMAGE))
#: Where the consumer copies the results: the asset it updates.
EDITED_IMAGES = Asset(os.environ.get("QWEN_EDITS_OUTPUT_URI", "file:///tmp/qwen_callback_edits"))

EXAMPLE_IMAGES = [
    "https://files.example.org/catalog/sneaker.png",
    "https://files.example.org/catalog/backpack.png",
]

with DAG(
    dag_id="qwen_callback_producer",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={"images": Param(EXAMPLE_IMAGES, type="array"), "prompt": Param("studio light", type="string")},
    tags=["example", "qwen", "apikley", "callbacks"],
    doc_md=__doc__,
):

    @task
    def list_images(params: dict[str, Any] | None = None) -> list[str]:
        """The images to edit; in production, a catalog query or a bucket listing."""
        return list((params or {})["images"])

    QwenImageToImageOperator.partial(
        task_id="submit",
        prompt="{{ params.prompt }}",
        wait_for_completion=False,
        # The receiver's defaults: apikley_default, and the asset apikley://<model>, i.e. FINISHED_EDITS.
        callback_url=callback_url(),
    ).expand(image_url=list_images())


with DAG(
    dag_id="qwen_callback_consumer",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=PartitionedAssetTimetable(assets=FINISHED_EDITS) if PartitionedAssetTimetable else [FINISHED_EDITS],
    catchup=False,
    tags=["example", "qwen", "apikley", "callbacks"],
    doc_md=__doc__,
):

    @task(outlets=[EDITED_IMAGES])
    def persist_results(triggering_asset_events: Any = None) -> list[dict[str, Any]]:
        """Copy each finished edit's results next to the others; a failed edit is reported, not copied."""
        from airflow_provider_qwen.hooks.apikley import ApikleyHook

        log = logging.getLogger("airflow.task")
        hook = ApikleyHook()
        folder = ObjectStoragePath(EDITED_IMAGES.uri)
        stored = []
        for event in (triggering_asset_events or {}).get(FINISHED_EDITS, []):
            edit = event.extra
            if edit["state"] != "success":
                log.warning(
                    "Apikley task %s failed: %s %s", edit["apikley_task_id"], edit["fail_code"], edit["fail_message"]
                )
                continue
            for index, url in enumerate(edit["result_urls"]):
                copy = hook.download_result(url, result_destination(folder, edit["apikley_task_id"], index, "png"))
                stored.append({"apikley_task_id": edit["apikley_task_id"], **copy.to_dict()})
        return stored

    persist_results()
