"""The trigger's event contract: built and checked in one place, carrying no more than the resuming side needs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from airflow_provider_qwen.emulator.script import task_record
from airflow_provider_qwen.events import EventStatus, TaskEvent
from airflow_provider_qwen.exceptions import ApikleyError, ApikleyTaskFailedError, ApikleyTaskTimeoutError
from airflow_provider_qwen.models import TaskRecord

TASK_ID = "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e"
RESULT_URL = "https://files.example.org/out/shoe-edited.png"


def ended(state: str, **kwargs) -> TaskRecord:
    return TaskRecord.from_api(task_record(TASK_ID, state, result_urls=[RESULT_URL], **kwargs))


def test_a_success_event_carries_the_results_and_not_the_prompt():
    payload = TaskEvent.ended(ended("success", input={"prompt": "p" * 5000, "image_url": "https://x.test/a.png"}))
    assert payload.to_payload() == {
        "status": "success",
        "apikley_task_id": TASK_ID,
        "result_urls": [RESULT_URL],
        "credits_consumed": 1.0,
    }


def test_the_input_travels_only_when_asked_for():
    event = TaskEvent.ended(ended("success"), with_input=True)
    assert event.to_payload()["input"]["prompt"] == "sepia"
    assert TaskEvent.from_payload(json.loads(json.dumps(event.to_payload()))).summary()["input"]["prompt"] == "sepia"


@pytest.mark.parametrize(
    "event",
    [
        TaskEvent.ended(ended("success")),
        TaskEvent.ended(ended("fail", fail_code="501", fail_message="nsfw")),
        TaskEvent(EventStatus.TIMEOUT, TASK_ID, message="late"),
        TaskEvent(EventStatus.ERROR, TASK_ID, message="401"),
    ],
    ids=lambda event: event.status.value,
)
def test_every_event_survives_json_unchanged(event):
    assert TaskEvent.from_payload(json.loads(json.dumps(event.to_payload()))) == event


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (TaskEvent.ended(ended("fail", fail_code="501", fail_message="nsfw")), ApikleyTaskFailedError),
        (TaskEvent(EventStatus.TIMEOUT, TASK_ID, message="late"), ApikleyTaskTimeoutError),
        (TaskEvent(EventStatus.ERROR, TASK_ID, message="401"), ApikleyError),
    ],
)
def test_every_other_outcome_fails_the_task_with_its_reason(event, error):
    with pytest.raises(error):
        event.summary()


def test_the_task_a_retry_replaced_travels_to_the_summary():
    replaced = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"
    event = replace(TaskEvent.ended(ended("success")), replaced_apikley_task_id=replaced)
    payload = json.loads(json.dumps(event.to_payload()))
    assert payload["replaced_apikley_task_id"] == replaced
    summary = TaskEvent.from_payload(payload).summary()
    assert (summary["apikley_task_id"], summary["replaced_apikley_task_id"]) == (TASK_ID, replaced)
    assert "replaced_apikley_task_id" not in TaskEvent.ended(ended("success")).summary()


def test_an_event_naming_a_replaced_task_of_the_wrong_shape_is_refused():
    payload = {**TaskEvent.ended(ended("success")).to_payload(), "replaced_apikley_task_id": "../x"}
    with pytest.raises(ApikleyError, match=r"replaced_apikley_task_id='../x' in its event is not a task id"):
        TaskEvent.from_payload(payload)


def test_the_output_path_travels_back_only_when_set():
    event = TaskEvent.ended(ended("success"))
    assert "output_path" not in event.to_payload()
    carried = replace(event, output_path="s3://bucket/edits")
    assert TaskEvent.from_payload(json.loads(json.dumps(carried.to_payload()))).output_path == "s3://bucket/edits"


def test_an_output_path_that_is_not_a_uri_string_is_refused():
    payload = {**TaskEvent.ended(ended("success")).to_payload(), "output_path": ["s3://bucket"]}
    with pytest.raises(ApikleyError, match=r"output_path=\['s3://bucket'\] in its event is not a URI string"):
        TaskEvent.from_payload(payload)
