"""The example DAGs, run by real Airflow (``dag.test()``) against the emulator on loopback."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from airflow.providers.common.compat.sdk import DagRunState

from airflow_provider_qwen.emulator.script import envelope
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from tests.emulator.conftest import png

pytestmark = [pytest.mark.integration, pytest.mark.dagrun, pytest.mark.usefixtures("airflow_db")]

DAGS_FOLDER = Path(__file__).parents[2] / "dags"
COLOURS = ("#c0392b", "#2c7fb8", "#27ae60", "#8e44ad")


@pytest.fixture
def images(apikley) -> list[str]:
    """Four source images uploaded to the emulator, as a catalog step would."""
    hook = ApikleyHook()
    return [hook.upload_file(png(colour), "tests", file_name=f"item-{n}.png") for n, colour in enumerate(COLOURS)]


def created_requests(apikley) -> list[dict]:
    return [task.request for task in apikley.state.tasks.values()]


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


def test_mapped_deferrable_edits_run_end_to_end(apikley, images):
    dag = load_dag("qwen_image_edit_example")
    dag_run = dag.test(run_conf={"images": images, "style": "warm light"})
    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)
    assert task_states(dag_run)["edit"] == ["success"] * len(images)

    assert apikley.state.accepted_creates == len(images)
    created = created_requests(apikley)
    assert sorted(request["input"]["image_url"] for request in created) == sorted(images)
    assert {request["input"]["prompt"] for request in created} == {"product photo, warm light"}

    task_ids = xcom_values(dag_run, "edit", key="apikley_task_id")
    assert sorted(task_ids) == sorted(apikley.state.tasks)
    (summary,) = xcom_values(dag_run, "summarize")
    assert sorted(summary) == sorted(images)
    assert all(url.startswith(apikley.base_url) for url in summary.values())


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "poked"])
def test_submit_then_sensor_stores_the_results_where_the_submitting_task_handed_on(
    apikley, images, tmp_path, deferrable
):
    apikley.script("recordInfo", envelope(code=500, msg="Server error"))  # the sensor's first check: it waits on
    dag = load_dag("qwen_submit_then_sense_example")
    dag.get_task("wait").deferrable = deferrable
    dag_run = dag.test(run_conf={"image": images[0], "output_uri": f"file://{tmp_path}/edits"})
    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)
    assert apikley.state.accepted_creates == 1
    (task_id,) = apikley.state.tasks
    (handed_on,) = xcom_values(dag_run, "submit")
    assert handed_on["output_path"] == f"file://{tmp_path}/edits"
    assert handed_on["result_name"] == "item-0"  # after the source image
    (sensed,) = xcom_values(dag_run, "wait")
    assert sensed["apikley_task_id"] == task_id
    assert sensed["state"] == "success"
    assert sensed["input"]["image_url"] == images[0]  # the sensor returns what the operator would
    assert len(apikley.seen("recordInfo")) > 1  # it checked, then waited (poking, or deferred)
    # ``dag.test()`` resumes a deferred sensor with the trigger's event alone: it carries output_path and the name
    (stored,) = sensed["stored"]
    assert stored["uri"] == f"file://{tmp_path}/edits/item-0.png"
    assert (tmp_path / "edits" / "item-0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failed_generation_is_submitted_anew_by_each_retry_then_fails_the_task(apikley, images):
    apikley.configure(fail_fraction=1.0)
    dag = load_dag("qwen_image_edit_example")
    dag_run = dag.test(run_conf={"images": images[:1], "style": "studio light"})
    assert dag_run.state == DagRunState.FAILED
    assert task_states(dag_run)["edit"] == ["failed"]
    assert apikley.state.accepted_creates == 3  # the first try and two retries


def test_the_callback_producer_submits_with_the_receiver_as_callback_and_never_polls(apikley, images, monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org/")
    dag = load_dag("qwen_callback_producer")
    dag_run = dag.test(run_conf={"images": images, "prompt": "studio light"})
    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)
    created = created_requests(apikley)
    assert sorted(request["input"]["image_url"] for request in created) == sorted(images)
    assert {request["callBackUrl"] for request in created} == {"https://airflow.example.org/apikley/callback"}
    assert not any(name.startswith("recordInfo") for name in apikley.stats()["api_codes"])


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


def test_the_callback_consumer_copies_each_finished_edit_and_reports_failures(apikley, tmp_path, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setenv("QWEN_EDITS_OUTPUT_URI", f"file://{tmp_path}/edits")
    persist_results = load_dag("qwen_callback_consumer").get_task("persist_results")
    assert [outlet.uri for outlet in persist_results.outlets] == [f"file://{tmp_path}/edits"]
    result = png("#e67e22")
    result_url = apikley.put_file("out/a.png", result)
    events = [
        SimpleNamespace(extra={"apikley_task_id": "a1", "state": "success", "result_urls": [result_url]}),
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
    assert [(item["apikley_task_id"], item["size"]) for item in stored] == [("a1", len(result))]
    assert (tmp_path / "edits" / "a1-0.png").read_bytes() == result


def test_a_generic_task_feeds_a_qwen_edit(apikley, tmp_path):
    dag_run = load_dag("qwen_generate_then_edit").test(
        run_conf={"subject": "a blue teapot", "style": "sepia", "output_uri": f"file://{tmp_path}"}
    )
    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)
    draw_request, edit_request = created_requests(apikley)
    assert (draw_request["model"], draw_request["input"]["prompt"]) == ("qwen/text-to-image", "a blue teapot")
    (drawn,) = xcom_values(dag_run, "draw")
    assert (edit_request["model"], edit_request["input"]["image_url"]) == (
        "qwen/image-to-image",
        drawn["result_urls"][0],
    )
    (edited,) = xcom_values(dag_run, "edit")
    (stored,) = edited["stored"]
    assert Path(stored["uri"].removeprefix("file://")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
