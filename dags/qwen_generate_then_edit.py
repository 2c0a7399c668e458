"""
Any Apikley model, chained with the typed Qwen edit: text-to-image draws a picture, image-to-image edits it.

``draw`` runs ``qwen/text-to-image`` through :class:`ApikleyCreateTaskOperator`, which takes any
model's ``input`` as a dict (checked here against a small JSON Schema before anything is sent,
else Apikley checks it); ``edit`` restyles the drawn picture with the typed
:class:`QwenImageToImageOperator` and copies the result to ``output_uri``. Both wait in the
triggerer, and ``edit`` reads the picture's URL from ``draw``'s result.
"""

from __future__ import annotations

import pendulum

from airflow.providers.common.compat.sdk import DAG, Param

from airflow_provider_qwen.operators.apikley import ApikleyCreateTaskOperator
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator

#: What ``draw`` sends is checked against this before any request: a typo costs nothing.
TEXT_TO_IMAGE_INPUT = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "minLength": 1, "maxLength": 5000},
        "image_size": {"enum": ["square", "square_hd", "portrait_4_3", "landscape_4_3"]},
        "output_format": {"enum": ["png", "jpeg"]},
        "seed": {"type": "integer"},
    },
    "required": ["prompt"],
    "additionalProperties": False,
}

with DAG(
    dag_id="qwen_generate_then_edit",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={
        "subject": Param("a ceramic mug on a wooden table", type="string"),
        "style": Param("sepia, warm light", type="string"),
        "output_uri": Param("file:///tmp/qwen-generate-then-edit", type="string"),
    },
    tags=["example", "qwen", "apikley"],
):
    draw = ApikleyCreateTaskOperator(
        task_id="draw",
        model="qwen/text-to-image",
        input={"prompt": "{{ params.subject }}", "image_size": "square", "seed": 3},
        input_schema=TEXT_TO_IMAGE_INPUT,
        deferrable=True,
    )
    edit = QwenImageToImageOperator(
        task_id="edit",
        prompt="{{ params.style }}",
        image_url="{{ ti.xcom_pull(task_ids='draw')['result_urls'][0] }}",
        strength=0.6,
        deferrable=True,
        output_path="{{ params.output_uri }}",
    )
    draw >> edit
