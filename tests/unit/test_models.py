from __future__ import annotations

import json
import logging
import re

import pytest

from airflow_provider_qwen.emulator.script import task_record
from airflow_provider_qwen.exceptions import ApikleyBadResponseError, ApikleyInputError, ApikleyTaskFailedError
from airflow_provider_qwen.models import MAX_RESULT_URLS, QwenImageToImageInput, TaskRecord, TaskState

TASK_ID = "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e"
IMAGE_URL = "https://files.example.org/in/shoe.png"
RESULT_URL = "https://files.example.org/out/shoe-edited.png"
INPUT = {"prompt": "sepia", "image_url": IMAGE_URL}

REQUIRED = {"prompt": "make it sepia", "image_url": IMAGE_URL}


def build(**overrides):
    return QwenImageToImageInput.build(**{**REQUIRED, **overrides})


@pytest.mark.parametrize(
    ("field", "valid"),
    [
        ("prompt", "p" * 5000),
        ("strength", 0),
        ("strength", 1),
        ("strength", 0.01),
        ("strength", 0.57),
        ("strength", "0.6"),
        ("output_format", "png"),
        ("output_format", "jpeg"),
        ("acceleration", "none"),
        ("acceleration", "regular"),
        ("acceleration", "high"),
        ("negative_prompt", "n" * 500),
        ("seed", 0),
        ("seed", 2**31),
        ("num_inference_steps", 2),
        ("num_inference_steps", 250),
        ("guidance_scale", 0),
        ("guidance_scale", 20),
        ("guidance_scale", 19.9),
        ("guidance_scale", 0.7),
        ("guidance_scale", 0.1 + 0.2),
        ("enable_safety_checker", False),
        ("image_url", "http://127.0.0.1:8765/files/a.webp"),
    ],
)
def test_values_on_the_bounds_are_accepted(field, valid):
    assert field in build(**{field: valid}).to_api()


@pytest.mark.parametrize(
    ("field", "invalid", "rule"),
    [
        ("prompt", "p" * 5001, "at most 5000 characters"),
        ("prompt", "", "at least 1 character"),
        ("image_url", "ftp://files.example.org/a.png", "http:// or https://"),
        ("image_url", "shoe.png", "http:// or https://"),
        ("strength", -0.01, "greater than or equal to 0"),
        ("strength", 1.01, "less than or equal to 1"),
        ("strength", 0.555, "must be a multiple of 0.01"),
        ("strength", "strong", "valid number"),
        ("strength", True, "a boolean is not a number"),
        ("output_format", "webp", "'png' or 'jpeg'"),
        ("acceleration", "turbo", "'none', 'regular' or 'high'"),
        ("negative_prompt", "n" * 501, "at most 500 characters"),
        ("seed", 1.5, "valid integer"),
        ("seed", "seven", "valid integer"),
        ("num_inference_steps", 1, "greater than or equal to 2"),
        ("num_inference_steps", 251, "less than or equal to 250"),
        ("num_inference_steps", 30.5, "valid integer"),
        ("guidance_scale", -0.1, "greater than or equal to 0"),
        ("guidance_scale", 20.1, "less than or equal to 20"),
        ("guidance_scale", 2.55, "must be a multiple of 0.1"),
        ("enable_safety_checker", "maybe", "valid boolean"),
        ("strength", float("nan"), "finite number"),
        ("guidance_scale", float("inf"), "finite number"),
    ],
)
def test_a_broken_rule_names_field_value_and_rule(field, invalid, rule):
    with pytest.raises(ApikleyInputError) as excinfo:
        build(**{field: invalid})
    message = str(excinfo.value)
    assert f"{field}=" in message
    assert repr(invalid)[:40] in message
    assert rule in message


@pytest.mark.parametrize("missing", ["prompt", "image_url"])
def test_required_fields(missing):
    fields = {key: value for key, value in REQUIRED.items() if key != missing}
    with pytest.raises(ApikleyInputError, match=f"{missing}: is required"):
        QwenImageToImageInput.build(**fields)


def test_unknown_field_is_refused_rather_than_silently_dropped():
    with pytest.raises(ApikleyInputError, match=r"strenght=0\.5: is not a field"):
        build(strenght=0.5)


def test_unset_fields_are_left_out_so_apikley_applies_its_defaults():
    assert build().to_api() == REQUIRED
    assert build(seed=7, strength="0.6").to_api() == {**REQUIRED, "seed": 7, "strength": 0.6}


def test_every_broken_field_is_reported_at_once():
    with pytest.raises(ApikleyInputError) as excinfo:
        build(strength=2, seed="x")
    assert "strength=2" in str(excinfo.value)
    assert "seed='x'" in str(excinfo.value)


def test_record_in_progress_has_no_results():
    parsed = TaskRecord.from_api(task_record(TASK_ID, "generating"))
    assert parsed.state is TaskState.GENERATING
    assert not parsed.state.is_terminal
    assert parsed.result_urls == []


def test_record_success_decodes_result_json_and_param():
    data = task_record(TASK_ID, "success", result_urls=[RESULT_URL], input=INPUT)
    parsed = TaskRecord.from_api(data)
    assert parsed.state.is_terminal
    assert parsed.result_urls == [RESULT_URL]
    assert parsed.input == INPUT
    assert parsed.complete_time == data["completeTime"] > parsed.create_time


def test_record_fail_keeps_code_and_message():
    data = task_record(TASK_ID, "fail", fail_code="501", fail_message="content flagged")
    data["failCode"] = 501  # some answers send it as a number
    parsed = TaskRecord.from_api(data)
    assert (parsed.state, parsed.fail_code, parsed.fail_message) == (TaskState.FAIL, "501", "content flagged")


#: C0 controls (newline and tab too), DEL and C1 controls.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def test_apikleys_texts_arrive_with_their_control_characters_escaped():
    data = task_record(TASK_ID, "fail", fail_code="501\x1b[2J", fail_message="flagged\ncredits consumed: 0\x9b\x7f")
    data["model"] = "qwen/image-to-image\x1b]52;c;cHduZWQ=\x07"
    record = TaskRecord.from_api(data)
    assert record.fail_code == "501\\x1b[2J"
    assert record.fail_message == "flagged\\x0acredits consumed: 0\\x9b\\x7f"
    assert record.model == "qwen/image-to-image\\x1b]52;c;cHduZWQ=\\x07"
    failure = str(ApikleyTaskFailedError(record.task_id, record.fail_code, record.fail_message))
    assert not CONTROL_CHARACTERS.search(failure) and not CONTROL_CHARACTERS.search(json.dumps(record.describe()))


def test_result_urls_that_are_not_http_urls_are_dropped_and_named_in_a_warning(caplog):
    junk = [
        "javascript:alert(document.cookie)",
        "file:///etc/passwd",
        {"url": "https://files.example.org/in-an-object.png"},
        "https://files.example.org/\x1b[2J.png",
    ]
    data = task_record(TASK_ID, "success")
    data["resultJson"] = json.dumps({"resultUrls": [junk[0], RESULT_URL, *junk[1:]]})
    with caplog.at_level(logging.WARNING, logger="airflow_provider_qwen.models"):
        record = TaskRecord.from_api(data)
    assert record.result_urls == [RESULT_URL]
    assert record.describe()["result_urls"] == [RESULT_URL]
    assert record.result_beyond_urls is None  # nothing dropped lingers in resultJson
    assert "passwd" not in record.model_dump_json()
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = warning.getMessage()
    assert f"Apikley task {TASK_ID}: dropped 4 of its 5 resultUrls entries" in message
    assert "'javascript:alert(document.cookie)', 'file:///etc/passwd', {'url': " in message
    assert message.endswith(", ...")  # a sample, not the whole flood
    assert not CONTROL_CHARACTERS.search(message)


def test_result_urls_entries_that_are_not_urls_count_toward_the_cap():
    data = task_record(TASK_ID, "success")
    data["resultJson"] = json.dumps({"resultUrls": [RESULT_URL, *["javascript:void(0)"] * MAX_RESULT_URLS]})
    with pytest.raises(ApikleyBadResponseError, match=f"holds {MAX_RESULT_URLS + 1} URLs"):
        TaskRecord.from_api(data)


def test_record_tolerates_absent_optional_fields_and_task_id_spelling():
    parsed = TaskRecord.from_api({"task_id": "abc", "state": "waiting"})
    assert (parsed.task_id, parsed.state, parsed.result_urls, parsed.input) == ("abc", TaskState.WAITING, [], {})


@pytest.mark.parametrize(
    "data",
    [
        None,
        {"state": "success"},
        {"taskId": "abc", "state": "paused"},
        {"taskId": "abc", "state": "success", "resultJson": "{not json"},
    ],
)
def test_record_that_is_not_the_documented_shape_is_a_clear_error(data):
    with pytest.raises(ApikleyBadResponseError, match="Unexpected recordInfo answer"):
        TaskRecord.from_api(data)


def test_record_param_round_trips_through_json():
    parsed = TaskRecord.from_api(task_record(TASK_ID, "success", result_urls=[RESULT_URL], input=INPUT))
    assert json.loads(json.dumps(parsed.input)) == parsed.input


def test_the_checks_moved_to_validation_still_import_from_models():
    from airflow_provider_qwen import models, validation

    moved = ("check_task_id", "check_input", "check_model", "check_callback_url", "is_http_url", "is_task_id")
    assert all(getattr(models, name) is getattr(validation, name) for name in moved)
