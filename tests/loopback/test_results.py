"""
Where an edit's results go and what an asset-scheduled DAG hears of them: named from ``result_name``
(by default the source's name, and the map index of a mapped edit) the same way on every path, never
over another edit's file; each ``Asset`` outlet's event carries the stored URIs.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from unittest import mock

import pytest

from airflow.providers.common.compat.sdk import Asset, AssetAlias, TaskDeferred
from airflow.sdk.execution_time.context import OutletEventAccessors
from airflow.triggers.base import TaskSuccessEvent

from airflow_provider_qwen.exceptions import ApikleyInputError
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from airflow_provider_qwen.triggers.apikley import ApikleyTaskTrigger
from tests.conftest import recording_xcom_set

#: The ways an edit ends on a worker or in the triggerer.
PATHS = ("blocking", "resumed", "triggerer")


def ti(map_index: int = -1) -> mock.Mock:
    return mock.Mock(dag_id="edits", task_id="edit", run_id="manual__1", map_index=map_index, try_number=1)


def edit(image_url: str, tmp_path, path: str = "blocking", **arguments) -> QwenImageToImageOperator:
    return QwenImageToImageOperator(
        task_id="edit",
        prompt="sepia",
        image_url=image_url,
        output_path=f"file://{tmp_path}/edits",
        poll_interval=0.01,
        expected_duration=0.0,
        deferrable=path != "blocking",
        end_in_triggerer=None if path == "triggerer" else False,
        **arguments,
    )


async def run(path: str, image_url: str, tmp_path, monkeypatch, map_index: int = -1, **arguments) -> dict:
    """The edit's XCom value, as ``path`` makes it."""
    context = {"ti": ti(map_index)}
    if path == "blocking":
        return edit(image_url, tmp_path, path, **arguments).execute(context)
    with pytest.raises(TaskDeferred) as excinfo:
        edit(image_url, tmp_path, path, **arguments).execute(context)
    kwargs = json.loads(json.dumps(excinfo.value.trigger.serialize()[1]))  # as the triggerer rebuilds it
    trigger = ApikleyTaskTrigger(**kwargs)
    pushed: list[dict] = []
    if path == "triggerer":
        assert kwargs["end_task_on_success"] is True
        monkeypatch.setattr("airflow.sdk.execution_time.xcom.XCom.set", recording_xcom_set(pushed))
        trigger.task_instance = SimpleNamespace(dag_id="edits", task_id="edit", run_id="manual__1", map_index=map_index)
    (event,) = [event async for event in trigger.run()]
    if path == "triggerer":
        assert isinstance(event, TaskSuccessEvent)
        (value,) = [push["value"] for push in pushed if push["key"] == "return_value"]
        return value
    # a fresh instance resumes, with a result_name that would render otherwise: the event's name is kept
    resuming = edit(image_url, tmp_path, path, **{**arguments, "result_name": "elsewhere"})
    return resuming.execute_complete(context, event.payload)


def stored_names(result: dict) -> list[str]:
    return [item["uri"].rsplit("/", 1)[-1] for item in result["stored"]]


@pytest.mark.parametrize("path", PATHS)
async def test_a_mapped_edit_is_named_after_its_source_and_index_on_every_path(
    apikley, source_image_url, tmp_path, monkeypatch, path
):
    result = await run(path, source_image_url, tmp_path, monkeypatch, map_index=3)
    assert stored_names(result) == ["shoe-3.png"]
    assert (tmp_path / "edits" / "shoe-3.png").stat().st_size == result["stored"][0]["size"] > 0
    assert result["apikley_task_id"] in apikley.state.tasks  # the task id stays in XCom


@pytest.mark.parametrize("path", ["blocking", "resumed"])
async def test_a_single_edit_is_named_after_its_source(apikley, source_image_url, tmp_path, monkeypatch, path):
    result = await run(path, source_image_url, tmp_path, monkeypatch)
    assert stored_names(result) == ["shoe.png"]


@pytest.mark.parametrize("path", PATHS)
async def test_a_result_name_template_names_the_results_the_same_on_every_path(
    apikley, source_image_url, tmp_path, monkeypatch, path
):
    template = "{{ 'edited' }}-{source_stem}-{index}-{apikley_task_id}"
    operator = edit(source_image_url, tmp_path, result_name=template)
    operator.render_template_fields({"ti": ti()})  # the Jinja part renders; the placeholders are the provider's
    assert operator.result_name == "edited-{source_stem}-{index}-{apikley_task_id}"
    result = await run(path, source_image_url, tmp_path, monkeypatch, map_index=2, result_name=operator.result_name)
    assert stored_names(result) == [f"edited-shoe-2-{result['apikley_task_id']}.png"]


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{source}", "it uses {source}"),
        ("{index!r}", "it uses {index}"),
        ("../{source_stem}", "it holds a path separator"),
        ("{source_stem}\uff0fup", "it holds a path separator"),  # FULLWIDTH SOLIDUS is '/' once NFKC-normalised
        ("..", "it is '..'"),
        ("x" * 200, "it renders to 200 bytes"),
        ("{source_stem", "expected '}' before end of string"),
    ],
)
def test_a_result_name_that_cannot_name_a_file_is_refused_before_paying(
    apikley, source_image_url, tmp_path, template, problem
):
    before = apikley.state.credits
    with pytest.raises(ApikleyInputError) as excinfo:
        edit(source_image_url, tmp_path, result_name=template).execute({"ti": ti()})
    assert str(excinfo.value).startswith("result_name=")
    assert "must be a template of a plain file name" in str(excinfo.value) and problem in str(excinfo.value)
    assert apikley.seen("createTask") == [] and apikley.state.credits == before


def test_another_edits_file_of_the_same_name_is_never_written_over(apikley, source_image_url, tmp_path):
    (tmp_path / "edits").mkdir()
    (tmp_path / "edits" / "shoe.png").write_bytes(b"another edit's result")
    result = edit(source_image_url, tmp_path).execute({"ti": ti()})
    assert stored_names(result) == [f"shoe-{result['apikley_task_id']}.png"]
    assert (tmp_path / "edits" / "shoe.png").read_bytes() == b"another edit's result"

    again = edit(source_image_url, tmp_path).execute({"ti": ti()})  # a second run: the same rule, its own task
    assert stored_names(again) == [f"shoe-{again['apikley_task_id']}.png"]


def test_a_source_uploaded_through_the_hook_is_named_without_its_upload_suffix(apikley, tmp_path):
    from airflow_provider_qwen.hooks.apikley import ApikleyHook
    from tests.loopback.test_files import png

    image_url = ApikleyHook().upload_base64(png("#2c7fb8"), "catalog", "Red Mug.png")
    assert "Red%20Mug-" in image_url  # stored under a unique name: Red Mug-<16 hex digits>.png
    result = edit(image_url, tmp_path).execute({"ti": ti()})
    assert stored_names(result) == ["Red_Mug.png"]


def outlet_events() -> OutletEventAccessors:
    """What a worker's context holds under ``outlet_events``: Airflow's accessor per outlet, with its ``extra``."""
    return OutletEventAccessors()


@pytest.mark.parametrize("path", ["blocking", "resumed"])
async def test_an_asset_outlet_event_carries_where_the_results_are_stored(
    apikley, source_image_url, tmp_path, monkeypatch, path
):
    asset, alias = Asset("file:///edits"), AssetAlias("edited")
    operator = edit(source_image_url, tmp_path, path, outlets=[asset, alias])
    events = outlet_events()
    context = {"ti": ti(), "outlet_events": events}
    if path == "blocking":
        result = operator.execute(context)
    else:
        with pytest.raises(TaskDeferred) as excinfo:
            operator.execute(context)
        (event,) = [event async for event in excinfo.value.trigger.run()]
        result = edit(source_image_url, tmp_path, path, outlets=[asset, alias]).execute_complete(context, event.payload)
    assert events[asset].extra == {
        "apikley_task_id": result["apikley_task_id"],
        "result_uris": [f"file://{tmp_path}/edits/shoe.png"],
    }
    assert events[alias].extra == {}  # an alias's events name their asset, which only the DAG's author knows


def test_without_output_path_the_event_carries_apikleys_result_urls(apikley, source_image_url):
    asset = Asset("file:///edits")
    events = outlet_events()
    operator = QwenImageToImageOperator(
        task_id="edit", prompt="sepia", image_url=source_image_url, poll_interval=0.01, outlets=[asset]
    )
    result = operator.execute({"ti": ti(), "outlet_events": events})
    assert events[asset].extra["result_uris"] == result["result_urls"] != []


def test_the_events_list_of_uris_is_capped_and_says_how_many_were_left_off():
    from airflow_provider_qwen.lineage import MAX_EVENT_URIS, outlet_extra

    uris = [f"file:///edits/{n}.png" for n in range(MAX_EVENT_URIS + 7)]
    extra = outlet_extra(uris=uris)
    assert extra == {"result_uris": uris[:MAX_EVENT_URIS], "result_uris_left_off": 7}
    assert outlet_extra(uris=uris[:3]) == {"result_uris": uris[:3]}
