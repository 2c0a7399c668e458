"""
Benchmark workload (c): N mapped edits as a plain ``@task`` with ``requests`` and a sleep loop.

Each mapped task POSTs ``createTask``, then asks ``recordInfo`` every ``POLL_SECONDS`` until the
task ends, holding its worker slot the whole time. ``python -m benchmarks.compare_waits`` runs it.

Needs the HTTP connection ``apikley_http`` (extra: ``{"Authorization": "Bearer <API key>"}``) and an
``image_url`` Apikley can fetch.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pendulum
import requests

from airflow.providers.common.compat.sdk import DAG, AirflowException, AirflowFailException, BaseHook, Param, task

#: Seconds between two status queries of one edit; the same in every benchmark DAG.
POLL_SECONDS = 2.0
CONNECTION_ID = "apikley_http"
MODEL = "qwen/image-to-image"
REQUEST_TIMEOUT_SECONDS = 30


def apikley_data(response: requests.Response) -> Any:
    """The ``data`` of an Apikley answer; Apikley may answer HTTP 200 with an error code in the body."""
    response.raise_for_status()
    body = response.json()
    if body.get("code") != 200:
        raise AirflowException(f"Apikley answered code {body.get('code')}: {body.get('msg') or body.get('message')}")
    return body["data"]


with DAG(
    dag_id="bench_python_sleep",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={
        "edits": Param(50, type="integer", minimum=1, maximum=1000),
        "image_url": Param("https://files.example.org/catalog/sneaker.png", type="string"),
    },
    tags=["benchmark", "requests"],
):

    @task
    def plan_edits(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """One edit of the same image per seed."""
        params = params or {}
        return [
            {
                "image_url": params["image_url"],
                "prompt": f"product photo, variation {seed}",
                "seed": seed,
                "strength": 0.6,
                "output_format": "png",
            }
            for seed in range(params["edits"])
        ]

    @task
    def edit(edit_input: dict[str, Any]) -> dict[str, Any]:
        """Submit one edit, then poll until it ends; return its task id and result URLs."""
        connection = BaseHook.get_connection(CONNECTION_ID)
        base_url = f"{connection.schema or 'http'}://{connection.host}:{connection.port}"
        with requests.Session() as session:
            session.headers.update(connection.extra_dejson)
            created = session.post(
                f"{base_url}/api/v1/jobs/createTask",
                json={"model": MODEL, "input": edit_input},
                timeout=REQUEST_TIMEOUT_SECONDS,
            )
            task_id = apikley_data(created)["taskId"]
            while True:
                answer = session.get(
                    f"{base_url}/api/v1/jobs/recordInfo", params={"taskId": task_id}, timeout=REQUEST_TIMEOUT_SECONDS
                )
                record = apikley_data(answer)
                if record["state"] == "success":
                    urls = json.loads(record["resultJson"])["resultUrls"]
                    return {"apikley_task_id": task_id, "state": "success", "result_urls": urls}
                if record["state"] == "fail":
                    raise AirflowFailException(f"Apikley task {task_id} failed: {record.get('failMsg')}")
                time.sleep(POLL_SECONDS)

    edit.expand(edit_input=plan_edits())
