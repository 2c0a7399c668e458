"""
What only the generic operator has: ``model`` and ``input`` checked by shape and an optional
JSON Schema, any model's results. Everything it shares with the Qwen operator is tested in
``test_operator.py``, with both.
"""

from __future__ import annotations

import json
import re
from unittest import mock

import pytest

from airflow_provider_qwen.emulator.script import envelope, task_record
from airflow_provider_qwen.exceptions import ApikleyInputError, ApikleyValidationError
from airflow_provider_qwen.operators.apikley import ApikleyCreateTaskOperator

TEXT_TO_IMAGE = "qwen/text-to-image"
SCHEMA = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "minLength": 1, "maxLength": 5000},
        "image_size": {"enum": ["square", "landscape_4_3"]},
    },
    "required": ["prompt"],
    "additionalProperties": False,
}


def make_task(**overrides) -> ApikleyCreateTaskOperator:
    arguments = {"task_id": "draw", "model": TEXT_TO_IMAGE, "input": {"prompt": "a red mug"}, "poll_interval": 0.01}
    return ApikleyCreateTaskOperator(**{**arguments, **overrides})


@pytest.fixture
def context():
    return {"ti": mock.Mock()}


@pytest.mark.parametrize("model", ["", "qwen image", "../../etc/passwd", "qwen/", "/qwen", "q" * 129, 42, None])
def test_a_malformed_model_fails_before_any_request(apikley, context, model):
    with pytest.raises(ApikleyInputError, match=re.escape(f"model={model!r}: must be an Apikley model name")):
        make_task(model=model).execute(context)
    assert apikley.seen() == []


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("a red mug", "must be a JSON object"),
        ({1: "a"}, "must be a JSON object"),
        ({"prompt": {"a", "set"}}, "must hold JSON values only"),
        ({"prompt": float("nan")}, "must hold JSON values only"),
        ({"prompt": "x" * 70_000}, "must be at most 65536 bytes"),
    ],
)
def test_an_input_that_is_not_a_bounded_json_object_fails_before_any_request(apikley, context, value, rule):
    with pytest.raises(ApikleyInputError, match=rf"^input.*{rule}"):
        make_task(input=value).execute(context)
    assert apikley.seen() == []


def test_input_schema_names_each_field_its_value_and_the_rule(apikley, context):
    bad = {"prompt": "", "image_size": "huge", "style": "noir"}
    with pytest.raises(ApikleyInputError) as excinfo:
        make_task(input=bad, input_schema=SCHEMA).execute(context)
    message = str(excinfo.value)
    assert message.startswith(f"Invalid input for {TEXT_TO_IMAGE}: ")
    assert "input.prompt='': " in message and "should be non-empty" in message
    assert "input.image_size='huge': 'huge' is not one of ['square', 'landscape_4_3']" in message
    assert "'style' was unexpected" in message
    assert apikley.seen() == []


def test_input_schema_may_be_a_json_file(apikley, context, tmp_path):
    schema_file = tmp_path / "text-to-image.json"
    schema_file.write_text(json.dumps(SCHEMA))
    with pytest.raises(ApikleyInputError, match=r"input.image_size='huge'"):
        make_task(input={"prompt": "mug", "image_size": "huge"}, input_schema=str(schema_file)).execute(context)
    with pytest.raises(ApikleyInputError, match=r"input_schema='.*missing.json': must be a readable JSON file"):
        make_task(input_schema=str(tmp_path / "missing.json")).execute(context)
    with pytest.raises(ApikleyInputError, match=r"input_schema: must be a valid JSON Schema"):
        make_task(input_schema={"type": "no-such-type"}).execute(context)
    assert apikley.seen() == []


def test_a_model_apikley_does_not_serve_is_refused_once_and_never_resubmitted(apikley, context):
    with pytest.raises(ApikleyValidationError):
        make_task(model="acme/no-such-model").execute(context)
    assert len(apikley.seen("createTask")) == 1
    assert apikley.state.accepted_creates == 0


def test_any_result_shape_comes_back_parsed_and_every_url_in_it_is_copied(apikley, context, tmp_path):
    picture = apikley.put_file("results/poster.png", b"\x89PNG\r\n\x1a\n" + b"\x02" * 32)
    answer = task_record("t-poster", "success", model=TEXT_TO_IMAGE, input={"prompt": "a poster"})
    answer["resultJson"] = json.dumps({"resultObject": {"caption": "A poster", "image": {"url": picture}}})
    apikley.script("createTask", envelope({"taskId": "t-poster"}))
    apikley.script("recordInfo", envelope(answer))
    result = make_task(input={"prompt": "a poster"}, output_path=f"file://{tmp_path}").execute(context)
    assert result["result"] == {"resultObject": {"caption": "A poster", "image": {"url": picture}}}
    assert result["result_urls"] == [picture]
    assert [item["uri"] for item in result["stored"]] == [f"file://{tmp_path}/t-poster-0.png"]


def test_a_result_of_urls_only_has_the_qwen_operators_shape(apikley, source_image_url, context):
    result = make_task(model="qwen/image-to-image", input={"prompt": "sepia", "image_url": source_image_url}).execute(
        context
    )
    assert set(result) == {"apikley_task_id", "state", "result_urls", "input", "credits_consumed"}
