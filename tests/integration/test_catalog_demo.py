"""The demo DAG, run by real Airflow against the emulator: upload, mapped deferred edits, persist, publish."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from PIL import Image

from airflow.providers.common.compat.sdk import DagRunState

from airflow_provider_qwen.emulator import EmulatorSettings, run_emulator
from tests.conftest import API_KEY, has_task_state_store
from tests.integration.test_example_dags import load_dag, task_states

pytestmark = [pytest.mark.integration, pytest.mark.dagrun, pytest.mark.slow, pytest.mark.usefixtures("airflow_db")]


@pytest.fixture
def emulator(monkeypatch):
    with run_emulator(EmulatorSettings(api_keys=[API_KEY], latency=(0.1, 0.1, 0.3))) as running:
        monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", running.airflow_connection())
        yield running


def test_catalog_is_edited_stored_and_published(emulator, tmp_path):
    dag_run = load_dag("qwen_catalog_edit").test(run_conf={"output_uri": f"file://{tmp_path}"})
    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    items = manifest["items"]
    assert len(items) == 6
    assert emulator.state.accepted_creates == 6
    cost = emulator.state.settings.cost_per_task
    assert [item["credits_consumed"] for item in items] == [cost] * 6
    assert manifest["credits_consumed"] == 6 * cost == emulator.state.settings.credits - emulator.state.credits
    assert {item["apikley_task_id"] for item in items} == set(emulator.state.tasks)
    for index, item in enumerate(items):  # each named after its product photo and map index
        stored = tmp_path / "edited" / f"{item['sku']}-{index}.png"
        assert item["stored_uri"] == f"file://{stored}"
        content = stored.read_bytes()
        assert hashlib.sha256(content).hexdigest() == item["sha256"]
        assert Image.open(io.BytesIO(content)).format == "PNG"
        assert content != (tmp_path / "source" / f"{item['sku']}.png").read_bytes()  # it was edited
        task = emulator.state.tasks[item["apikley_task_id"]]
        assert task.request["input"] == {
            "prompt": item["prompt"],
            "image_url": task.request["input"]["image_url"],
            "seed": item["seed"],
            "strength": item["strength"],
            "output_format": "png",
        }
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.width >= 2 * 240 and sheet.height >= 6 * 180
    assert not list(tmp_path.rglob("*.partial"))


@pytest.mark.on_deployment  # test_deployment.py's worker killed right after submitting
def test_a_worker_that_dies_right_after_submitting_is_resumed_not_resubmitted(emulator, tmp_path, monkeypatch):
    from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator

    real_defer = QwenImageToImageOperator.defer
    crashed: list[str] = []

    def crash_once_before_deferring(self, *, trigger, **kwargs):
        if not crashed:
            crashed.append(trigger.apikley_task_id)
            raise RuntimeError("worker lost right after createTask")
        return real_defer(self, trigger=trigger, **kwargs)

    monkeypatch.setattr(QwenImageToImageOperator, "defer", crash_once_before_deferring)
    dag_run = load_dag("qwen_catalog_edit").test(run_conf={"output_uri": f"file://{tmp_path}"})
    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)
    assert crashed
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    if has_task_state_store():
        assert emulator.state.accepted_creates == 6  # the crashed try's task was resumed, not paid again
        assert crashed[0] in {item["apikley_task_id"] for item in manifest["items"]}
    else:  # as documented: without a task state store, the retry submits a new task
        assert emulator.state.accepted_creates == 7
        assert crashed[0] not in {item["apikley_task_id"] for item in manifest["items"]}


def test_the_catalog_is_stored_and_published_on_s3(emulator, s3):
    """The same demo with its output on S3 (moto's server): every result and the manifest, read back."""
    dag_run = load_dag("qwen_catalog_edit").test(run_conf={"output_uri": s3.uri("catalog")})
    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)
    objects = s3.objects()
    items = json.loads(objects["catalog/manifest.json"])["items"]
    assert len(items) == 6
    for index, item in enumerate(items):
        key = f"catalog/edited/{item['sku']}-{index}.png"
        assert item["stored_uri"] == s3.uri(key)
        assert hashlib.sha256(objects[key]).hexdigest() == item["sha256"]
    assert not [key for key in objects if key.endswith(".partial") or "write-check" in key]
    assert s3.unfinished_uploads() == []
