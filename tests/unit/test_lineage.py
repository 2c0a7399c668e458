from __future__ import annotations

import sys
from unittest import mock

import pytest

from airflow_provider_qwen.lineage import dataset_for, edit_lineage
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from tests.conftest import BASE_URL
from tests.unit.fixtures import IMAGE_URL, RESULT_URL, TASK_ID, created, record

CREATE_URL = f"{BASE_URL}/api/v1/jobs/createTask"
RECORD_URL = f"{BASE_URL}/api/v1/jobs/recordInfo"


@pytest.mark.parametrize(
    ("uri", "namespace", "name"),
    [
        ("https://files.example.org/in/shoe.png", "https://files.example.org", "in/shoe.png"),
        ("s3://bucket/edits/a.png", "s3://bucket", "edits/a.png"),
        ("file:///data/edits/a.png", "file", "/data/edits/a.png"),
    ],
)
def test_datasets_are_named_the_openlineage_way(uri, namespace, name):
    dataset = dataset_for(uri)
    assert (dataset.namespace, dataset.name) == (namespace, name)


def test_a_finished_edit_has_the_source_in_the_copies_out_and_the_task_as_run_facet(requests_mock, tmp_path):
    requests_mock.post(CREATE_URL, json=created())
    requests_mock.get(RECORD_URL, json=record("success"))
    requests_mock.get(RESULT_URL, content=b"\x89PNG\r\n\x1a\n" + b"0" * 64, headers={"Content-Type": "image/png"})
    operator = QwenImageToImageOperator(
        task_id="edit", prompt="sepia", image_url=IMAGE_URL, deferrable=False, output_path=str(tmp_path)
    )
    operator.execute({"ti": mock.Mock()})
    lineage = operator.get_openlineage_facets_on_complete(task_instance=None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("https://files.example.org", "in/shoe.png")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", str(tmp_path / f"{TASK_ID}-0.png"))]
    facet = lineage.run_facets["externalQuery"]
    assert (facet.externalQueryId, facet.source) == (TASK_ID, "apikley")


def test_without_a_copy_the_outputs_are_the_result_urls():
    lineage = edit_lineage({"apikley_task_id": TASK_ID, "result_urls": [RESULT_URL], "input": {"image_url": IMAGE_URL}})
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("https://files.example.org", "out/shoe-edited.png")]


def test_an_operator_that_did_not_finish_has_no_lineage():
    operator = QwenImageToImageOperator(task_id="edit", prompt="sepia", image_url=IMAGE_URL)
    assert operator.get_openlineage_facets_on_complete(task_instance=None) is None


def test_without_openlineage_installed_there_is_no_lineage_and_no_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "airflow.providers.openlineage.extractors", None)
    assert edit_lineage({"apikley_task_id": TASK_ID, "result_urls": [], "input": {"image_url": IMAGE_URL}}) is None
