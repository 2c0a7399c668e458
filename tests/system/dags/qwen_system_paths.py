"""
Every way an edit can finish, side by side: the same edit through each path each operator offers.

Each case edits the same image with the same prompt and seed, so every path must give the same
result bytes, the same XCom value (but for ids and folders), the same extra link, the same final
log line and, where declared, one asset event and one ``on_success_callback`` per edit. Two DAGs
come from this file with the same tasks: ``qwen_system_paths``, run by the deployment, and
``qwen_system_paths_cli``, run with ``airflow dags test`` (it stays paused, so the scheduler never
touches that run).

The cases, by task id:

- ``{qwen,generic}_{poked,resumed,triggerer}``: not deferrable; deferred and resumed on a worker
  (``end_in_triggerer=False``); deferred with the defaults, which end it in the triggerer.
- ``etl_{qwen,generic}_{poked,deferred}``: with ``outlets`` and an ``on_success_callback``, which
  only a worker keeps; the deferred ones use the defaults, which must resume them on a worker.
  Their OpenLineage is enabled (the deployment enables it selectively), and so is that of
  ``lineage_qwen_deferred``, a plain deferred edit that must resume on a worker for it.
- ``sensor_{dict,id}_{poked,deferred}``: the two-step hand-off, the sensor given the submit's dict
  (whose ``output_path`` it must keep across a deferral) or its id.
- ``batch``: the batch operator, with ``outlets`` and a callback.
- ``etl_mapped``: three mapped deferrable edits with an asset outlet and the defaults, whose events
  start ``qwen_system_paths_consumer``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pendulum

from airflow.providers.common.compat.sdk import DAG, Asset, Param, task
from airflow.providers.openlineage.utils.selective_enable import enable_lineage
from airflow.providers.standard.operators.empty import EmptyOperator

from airflow_provider_qwen.models import QWEN_IMAGE_TO_IMAGE
from airflow_provider_qwen.operators.apikley import ApikleyCreateTaskOperator
from airflow_provider_qwen.operators.batch import QwenImageToImageBatchOperator
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from airflow_provider_qwen.sensors.apikley import ApikleyTaskSensor

#: The asset every ETL case updates.
EDITED = Asset("apikley://system/edited")
#: The asset the mapped ETL edits update, and the seeds they map over.
EDITED_MAPPED = Asset("apikley://system/edited-mapped")
MAPPED_SEEDS = [1, 2, 3]
#: The edit every case makes.
PROMPT, SEED = "sepia studio light", 7
IMAGE_URL = "{{ ti.xcom_pull(task_ids='prepare') }}"
OUTPUT_PATH = "{{ params.output_uri }}/{{ task.task_id }}"
#: The pool of every task but the deferred two-step cases: it has no slots until both of their
#: sensors have deferred, so that nothing delays them while their edits still run.
HELD_POOL = "qwen_system_paths_held"
#: The cases whose value downstream tasks map over.
MAPPED_OVER = ("qwen_poked", "qwen_resumed", "qwen_triggerer", "generic_triggerer")


def record_callback(context: dict[str, Any]) -> None:
    """``on_success_callback``: a file named for the task, holding the Apikley id it pushed."""
    ti = context["ti"]
    folder = Path(context["params"]["output_uri"].removeprefix("file://")) / "callbacks"
    folder.mkdir(parents=True, exist_ok=True)
    name = ti.task_id if ti.map_index in (-1, None) else f"{ti.task_id}-{ti.map_index}"
    (folder / f"{name}.json").write_text(json.dumps({"run_id": ti.run_id}))


def qwen(task_id: str, **arguments: Any) -> QwenImageToImageOperator:
    return QwenImageToImageOperator(
        task_id=task_id, image_url=IMAGE_URL, prompt=PROMPT, seed=SEED, **{"output_path": OUTPUT_PATH, **arguments}
    )


def generic(task_id: str, **arguments: Any) -> ApikleyCreateTaskOperator:
    return ApikleyCreateTaskOperator(
        task_id=task_id,
        model=QWEN_IMAGE_TO_IMAGE,
        input={"image_url": IMAGE_URL, "prompt": PROMPT, "seed": SEED},
        output_path=OUTPUT_PATH,
        **arguments,
    )


def paths_dag(dag_id: str) -> DAG:
    with DAG(
        dag_id=dag_id,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        schedule=None,
        catchup=False,
        params={"output_uri": Param("file:///tmp/qwen-system-paths", type="string")},
        tags=["qwen", "system-test"],
    ) as dag:

        @task
        def prepare() -> str:
            """Upload the source image once."""
            from airflow_provider_qwen.demo.images import draw_product
            from airflow_provider_qwen.hooks.apikley import ApikleyHook

            return ApikleyHook().upload_file(draw_product("Paths", "#fef", "#2c3e50"), "system/paths", "source.png")

        source = prepare()
        rest = {"pool": HELD_POOL}
        etl = {"outlets": [EDITED], "on_success_callback": record_callback, **rest}
        cases = [
            qwen("qwen_poked", deferrable=False, **rest),
            qwen("qwen_resumed", deferrable=True, end_in_triggerer=False, **rest),
            qwen("qwen_triggerer", deferrable=True, **rest),
            generic("generic_poked", deferrable=False, **rest),
            generic("generic_resumed", deferrable=True, end_in_triggerer=False, **rest),
            generic("generic_triggerer", deferrable=True, **rest),
            enable_lineage(qwen("etl_qwen_poked", deferrable=False, **etl)),
            enable_lineage(qwen("etl_qwen_deferred", deferrable=True, **etl)),
            enable_lineage(generic("etl_generic_deferred", deferrable=True, **etl)),
            enable_lineage(qwen("lineage_qwen_deferred", deferrable=True, **rest)),
            QwenImageToImageBatchOperator(
                task_id="batch",
                inputs=[{"image_url": IMAGE_URL, "prompt": PROMPT, "seed": SEED}] * 2,
                output_path=OUTPUT_PATH,
                **etl,
            ),
        ]
        # The deferred two steps run alone until both sensors have deferred: the test opens HELD_POOL then.
        for mode, deferrable in (("poked", False), ("deferred", True)):
            first = rest if mode == "poked" else {}
            # the operator hands its output_path on to the sensor, in its returned dict
            handed = qwen(f"submit_{mode}", wait_for_completion=False, **first)
            cases.append(
                ApikleyTaskSensor(
                    task_id=f"sensor_dict_{mode}", apikley_task_id=handed.output, deferrable=deferrable, **first
                )
            )
            by_id = qwen(f"submit_id_{mode}", wait_for_completion=False, output_path=None, **first)
            cases.append(
                ApikleyTaskSensor(
                    task_id=f"sensor_id_{mode}",
                    apikley_task_id=f"{{{{ ti.xcom_pull(task_ids='{by_id.task_id}', key='apikley_task_id') }}}}",
                    output_path=OUTPUT_PATH,
                    deferrable=deferrable,
                    **first,
                )
            )
            source >> [handed, by_id]
            by_id >> cases[-1]
        source >> cases[:11]
        # the data-aware ETL of the issue: mapped deferrable edits with an asset outlet, the defaults otherwise
        mapped_etl = QwenImageToImageOperator.partial(
            task_id="etl_mapped", image_url=IMAGE_URL, prompt=PROMPT, deferrable=True, outlets=[EDITED_MAPPED], **rest
        ).expand(seed=MAPPED_SEEDS)
        source >> mapped_etl
        for case in cases:
            if case.task_id in MAPPED_OVER:
                # a mapped task per (key, value) pair of the edit's dict (a pair passes as a sequence of addresses);
                # the scheduler expands it and, an EmptyOperator, ends it without a worker
                EmptyOperator.partial(task_id=f"fields_of_{case.task_id}").expand(email=case.output)
    return dag


paths_dag("qwen_system_paths")
paths_dag("qwen_system_paths_cli")

with DAG(
    dag_id="qwen_system_paths_consumer",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=[EDITED_MAPPED],
    catchup=False,
    tags=["qwen", "system-test"],
):

    @task
    def consume(triggering_asset_events: dict[Any, list[Any]] | None = None) -> int:
        """How many edits this run was started by."""
        return sum(len(events) for events in (triggering_asset_events or {}).values())

    consume()
