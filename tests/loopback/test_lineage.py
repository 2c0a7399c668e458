from __future__ import annotations

import sys
from unittest import mock

import pytest

from airflow_provider_qwen.lineage import dataset_for, edit_lineage
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator

#: For the tests that reach no Apikley: a task id, a source and a result as Apikley names them.
TASK_ID = "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e"
IMAGE_URL = "https://files.example.org/in/shoe.png"
RESULT_URL = "https://files.example.org/out/shoe-edited.png"


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


def test_a_finished_edit_has_the_source_in_the_copies_out_and_the_task_as_run_facet(
    apikley, source_image_url, tmp_path
):
    operator = QwenImageToImageOperator(
        task_id="edit",
        prompt="sepia",
        image_url=source_image_url,
        deferrable=False,
        poll_interval=0.01,
        output_path=str(tmp_path),
    )
    operator.execute({"ti": mock.Mock()})
    (task_id,) = apikley.state.tasks
    lineage = operator.get_openlineage_facets_on_complete(task_instance=None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [(apikley.base_url, "files/tests/shoe.png")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", str(tmp_path / "shoe.png"))]
    facet = lineage.run_facets["externalQuery"]
    assert (facet.externalQueryId, facet.source) == (task_id, "apikley")


def test_without_a_copy_the_outputs_are_the_result_urls():
    lineage = edit_lineage({"apikley_task_id": TASK_ID, "result_urls": [RESULT_URL], "input": {"image_url": IMAGE_URL}})
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("https://files.example.org", "out/shoe-edited.png")]


def test_an_operator_that_did_not_finish_has_no_lineage():
    operator = QwenImageToImageOperator(task_id="edit", prompt="sepia", image_url=IMAGE_URL)
    assert operator.get_openlineage_facets_on_complete(task_instance=None) is None


def test_without_openlineage_installed_there_is_no_lineage_and_no_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "airflow.providers.openlineage.extractors", None)
    assert edit_lineage({"apikley_task_id": TASK_ID, "result_urls": [], "input": {"image_url": IMAGE_URL}}) is None
