"""The example DAGs, run by real Airflow (``dag.test()``) against a fake Apikley on loopback."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from airflow.providers.common.compat.sdk import DagRunState

from tests.conftest import API_KEY
from tests.fake_apikley import FakeApikley

pytestmark = [pytest.mark.integration, pytest.mark.dagrun, pytest.mark.usefixtures("airflow_db")]

DAGS_FOLDER = Path(__file__).parents[2] / "dags"
IMAGES = [f"https://files.example.org/catalog/item-{index}.png" for index in range(4)]


@pytest.fixture
def fake_apikley(monkeypatch):
    with FakeApikley(API_KEY) as fake:
        monkeypatch.setenv(
            "AIRFLOW_CONN_APIKLEY_DEFAULT",
            json.dumps({"conn_type": "apikley", "host": fake.base_url, "password": API_KEY}),
        )
        yield fake


def load_dag(dag_id: str, dag_folder: Path = DAGS_FOLDER):
    """The DAG ``dag_id`` from ``dag_folder``, which must import without errors."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow < 3.2
        from airflow.models.dagbag import DagBag

    bag = DagBag(dag_folder=str(dag_folder))
    assert not bag.import_errors
    return bag.get_dag(dag_id)


def xcom_values(dag_run, task_id: str, key: str = "return_value") -> list:
    """What the task pushed, read from the metadata database, by map index."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    query = XComModel.get_many(run_id=dag_run.run_id, key=key, task_ids=task_id, dag_ids=dag_run.dag_id)
    with create_session() as session:
        rows = session.scalars(query.order_by(XComModel.map_index)).all()
        return [XComModel.deserialize_value(row) for row in rows]


def task_states(dag_run) -> dict[str, list[str]]:
    states: dict[str, list[str]] = {}
    for ti in dag_run.get_task_instances():
        states.setdefault(ti.task_id, []).append(ti.state)
    return states


def test_mapped_deferrable_edits_run_end_to_end(fake_apikley):
    dag = load_dag("qwen_image_edit_example")
    dag_run = dag.test(run_conf={"images": IMAGES, "style": "warm light"})
    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)
    assert task_states(dag_run)["edit"] == ["success"] * len(IMAGES)

    assert fake_apikley.calls["POST /api/v1/jobs/createTask"] == len(IMAGES)
    # queuing when first checked by the operator, then generating and success in the trigger
    assert fake_apikley.calls["GET /api/v1/jobs/recordInfo"] == 3 * len(IMAGES)
    created = [task["request"] for task in fake_apikley.tasks.values()]
    assert sorted(request["input"]["image_url"] for request in created) == IMAGES
    assert {request["input"]["prompt"] for request in created} == {"product photo, warm light"}

    task_ids = xcom_values(dag_run, "edit", key="apikley_task_id")
    assert sorted(task_ids) == sorted(fake_apikley.tasks)
    (summary,) = xcom_values(dag_run, "summarize")
    assert sorted(summary) == IMAGES
    assert all(url.startswith(f"{fake_apikley.base_url}/results/") for url in summary.values())


def test_submit_then_deferrable_sensor(fake_apikley):
    dag = load_dag("qwen_submit_then_sense_example")
    dag_run = dag.test(run_conf={"image": IMAGES[0]})
    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)
    assert fake_apikley.calls["POST /api/v1/jobs/createTask"] == 1
    (task_id,) = fake_apikley.tasks
    (sensed,) = xcom_values(dag_run, "wait")
    assert sensed["apikley_task_id"] == task_id
    assert sensed["state"] == "success"


def test_a_failed_generation_is_submitted_anew_by_each_retry_then_fails_the_task(fake_apikley):
    dag = load_dag("qwen_image_edit_example")
    dag_run = dag.test(run_conf={"images": IMAGES[:1], "style": "please fail"})
    assert dag_run.state == DagRunState.FAILED
    assert task_states(dag_run)["edit"] == ["failed"]
    assert fake_apikley.calls["POST /api/v1/jobs/createTask"] == 3  # the first try and two retries


def test_the_callback_producer_submits_with_the_receiver_as_callback_and_never_polls(fake_apikley, monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org/")
    dag = load_dag("qwen_callback_producer")
    dag_run = dag.test(run_conf={"images": IMAGES, "prompt": "studio light"})
    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)
    requests = [task["request"] for task in fake_apikley.tasks.values()]
    assert sorted(request["input"]["image_url"] for request in requests) == IMAGES
    assert {request["callBackUrl"] for request in requests} == {"https://airflow.example.org/apikley/callback"}
    assert fake_apikley.calls["GET /api/v1/jobs/recordInfo"] == 0


FINISHED_EDITS_URI = "apikley://qwen/image-to-image"


class EventsByAssetUri(Mapping):
    """``triggering_asset_events`` as a task reads it: looked up by asset (Airflow 3.1's assets do not hash)."""

    def __init__(self, events: dict[str, list]) -> None:
        self.events = events

    def __getitem__(self, asset) -> list:
        return self.events[asset.uri]

    def __iter__(self):
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)


def test_the_callback_consumer_copies_each_finished_edit_and_reports_failures(tmp_path, monkeypatch, requests_mock):
    from types import SimpleNamespace

    monkeypatch.setenv("QWEN_EDITS_OUTPUT_URI", f"file://{tmp_path}/edits")
    persist_results = load_dag("qwen_callback_consumer").get_task("persist_results")
    assert [outlet.uri for outlet in persist_results.outlets] == [f"file://{tmp_path}/edits"]
    png = b"\x89PNG\r\n\x1a\n" + b"\x02" * 32
    requests_mock.get("https://files.example.org/out/a.png", content=png)
    events = [
        SimpleNamespace(
            extra={"apikley_task_id": "a1", "state": "success", "result_urls": ["https://files.example.org/out/a.png"]}
        ),
        SimpleNamespace(
            extra={
                "apikley_task_id": "b2",
                "state": "fail",
                "result_urls": [],
                "fail_code": "501",
                "fail_message": "nsfw",
            }
        ),
    ]
    stored = persist_results.python_callable(triggering_asset_events=EventsByAssetUri({FINISHED_EDITS_URI: events}))
    assert [(item["apikley_task_id"], item["size"]) for item in stored] == [("a1", len(png))]
    assert (tmp_path / "edits" / "a1-0.png").read_bytes() == png
