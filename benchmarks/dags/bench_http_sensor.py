"""
Benchmark workloads (b) and (d): N mapped edits wired from apache-airflow-providers-http, as users do today.

(b) ``bench_http_sensor``:
A mapped ``HttpOperator`` POSTs ``createTask`` and keeps the task id (``response_filter``); a
mapped ``HttpSensor`` then polls ``recordInfo`` every ``POLL_SECONDS`` with ``deferrable=True``
and a ``response_check`` on the task's state. ``HttpSensor`` ignores ``deferrable`` whenever a
``response_check`` is given (providers-http 6.3: ``execute`` takes the poke path), so each sensor
pokes on a worker and holds its slot until the edit ends. Without a ``response_check`` it would
defer, but its trigger fires on the first answer that is not a 404, and Apikley answers HTTP 200
while an edit is still generating.

(d) ``bench_http_task_group``: the same two operators per edit in a mapped task group, as a user
writes per-item waits, so each sensor starts right after its own create instead of after all of them.

``python -m benchmarks.compare_waits`` runs both.

Needs an HTTP connection ``apikley_http`` to Apikley whose extra holds the header
``{"Authorization": "Bearer <API key>"}``, and an ``image_url`` Apikley can fetch.
"""

from __future__ import annotations

import json
from typing import Any

import pendulum
from requests import Response

from airflow.providers.common.compat.sdk import (
    DAG,
    AirflowException,
    AirflowFailException,
    Param,
    PokeReturnValue,
    task,
    task_group,
)
from airflow.providers.http.operators.http import HttpOperator
from airflow.providers.http.sensors.http import HttpSensor

#: Seconds between two status queries of one edit; the same in every benchmark DAG.
POLL_SECONDS = 2.0
CONNECTION_ID = "apikley_http"
MODEL = "qwen/image-to-image"


def create_body(image_url: str, seed: int) -> str:
    """The ``createTask`` body of one edit of ``image_url``."""
    input = {"image_url": image_url, "prompt": f"product photo, variation {seed}", "seed": seed, "strength": 0.6}
    return json.dumps({"model": MODEL, "input": {**input, "output_format": "png"}})


def apikley_data(response: Response) -> Any:
    """The ``data`` of an Apikley answer; Apikley may answer HTTP 200 with an error code in the body."""
    body = response.json()
    if body.get("code") != 200:
        raise AirflowException(f"Apikley answered code {body.get('code')}: {body.get('msg') or body.get('message')}")
    return body["data"]


def created_task_id(response: Response) -> str:
    """The id of the task ``createTask`` made."""
    return apikley_data(response)["taskId"]


def as_record_query(task_id: str) -> dict[str, str]:
    """The query string of ``recordInfo`` for one task."""
    return {"taskId": task_id}


def edit_finished(response: Response) -> bool | PokeReturnValue:
    """Done with the result URLs once the task succeeded; fail at once when it failed; else poke again."""
    record = apikley_data(response)
    if record["state"] == "fail":
        raise AirflowFailException(f"Apikley task {record['taskId']} failed: {record.get('failMsg')}")
    if record["state"] != "success":
        return False
    return PokeReturnValue(is_done=True, xcom_value=json.loads(record["resultJson"])["resultUrls"])


with DAG(
    dag_id="bench_http_sensor",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={
        "edits": Param(50, type="integer", minimum=1, maximum=1000),
        "image_url": Param("https://files.example.org/catalog/sneaker.png", type="string"),
    },
    tags=["benchmark", "http"],
):

    @task
    def plan_requests(params: dict[str, Any] | None = None) -> list[str]:
        """One ``createTask`` body per seed, each editing the same image."""
        params = params or {}
        return [create_body(params["image_url"], seed) for seed in range(params["edits"])]

    create = HttpOperator.partial(
        task_id="create",
        http_conn_id=CONNECTION_ID,
        endpoint="/api/v1/jobs/createTask",
        method="POST",
        headers={"Content-Type": "application/json"},
        response_filter=created_task_id,
    ).expand(data=plan_requests())

    HttpSensor.partial(
        task_id="wait",
        http_conn_id=CONNECTION_ID,
        endpoint="/api/v1/jobs/recordInfo",
        response_check=edit_finished,
        poke_interval=POLL_SECONDS,
        timeout=3600,
        deferrable=True,
    ).expand(request_params=create.output.map(as_record_query))


with DAG(
    dag_id="bench_http_task_group",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={
        "edits": Param(50, type="integer", minimum=1, maximum=1000),
        "image_url": Param("https://files.example.org/catalog/sneaker.png", type="string"),
    },
    tags=["benchmark", "http"],
):

    @task
    def plan_requests(params: dict[str, Any] | None = None) -> list[str]:
        """One ``createTask`` body per seed, each editing the same image."""
        params = params or {}
        return [create_body(params["image_url"], seed) for seed in range(params["edits"])]

    @task_group
    def one_edit(body: str) -> None:
        create = HttpOperator(
            task_id="create",
            http_conn_id=CONNECTION_ID,
            endpoint="/api/v1/jobs/createTask",
            method="POST",
            headers={"Content-Type": "application/json"},
            data=body,
            response_filter=created_task_id,
        )
        HttpSensor(
            task_id="wait",
            http_conn_id=CONNECTION_ID,
            endpoint="/api/v1/jobs/recordInfo",
            request_params={"taskId": create.output},
            response_check=edit_finished,
            poke_interval=POLL_SECONDS,
            timeout=3600,
            deferrable=True,
        )

    one_edit.expand(body=plan_requests())
