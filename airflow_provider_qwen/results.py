"""
What a finished wait gives the task: the dict pushed to XCom, or the exception that fails it.

The operator and the sensor, poking or deferred, all go through here, so they return the same
dict and fail with the same messages.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_qwen.exceptions import ApikleyError, ApikleyTaskFailedError, ApikleyTaskTimeoutError
from airflow_provider_qwen.models import TaskRecord, TaskState, is_task_id


def task_summary(apikley_task_id: str, state: str, result_urls: list[str], input: dict[str, Any]) -> dict[str, Any]:
    """
    The task's XCom value: small, JSON only.

    :return: ``apikley_task_id``, ``state``, ``result_urls`` and the ``input`` of the task.
    """
    return {
        "apikley_task_id": apikley_task_id,
        "state": state,
        "result_urls": list(result_urls),
        "input": dict(input),
    }


def result_from_record(record: TaskRecord) -> dict[str, Any]:
    """
    The summary of an ended task.

    :raises ApikleyTaskFailedError: when the task ended in state ``fail``.
    """
    if record.state is TaskState.FAIL:
        raise ApikleyTaskFailedError(record.task_id, record.fail_code, record.fail_message)
    if record.state is not TaskState.SUCCESS:
        raise ApikleyError(f"Apikley task {record.task_id} has not ended yet (state {record.state.value})")
    return task_summary(record.task_id, record.state.value, record.result_urls, record.input)


def event_from_record(record: TaskRecord) -> dict[str, Any]:
    """The trigger event for an ended task: JSON primitives, no secrets, no image bytes."""
    return {
        "status": "success" if record.state is TaskState.SUCCESS else "failed",
        "apikley_task_id": record.task_id,
        "result_urls": record.result_urls,
        "fail_code": record.fail_code,
        "fail_message": record.fail_message,
        "input": record.input,
    }


def result_from_event(event: Any) -> dict[str, Any]:
    """
    Check a trigger event and turn it into the task's summary.

    :raises ApikleyTaskFailedError: for a ``failed`` event.
    :raises ApikleyTaskTimeoutError: for a ``timeout`` event.
    :raises ApikleyError: for an ``error`` event, or an event that is not one the trigger sends.
    """
    if not isinstance(event, dict):
        raise ApikleyError(f"Expected an Apikley trigger event (a dict), got {event!r}")
    status = event.get("status")
    task_id = event.get("apikley_task_id")
    if not is_task_id(task_id):
        raise ApikleyError(f"Apikley trigger event without a task id of the right shape: {event!r}")
    if status == "success":
        urls = event.get("result_urls")
        if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
            raise ApikleyError(f"Apikley task {task_id} succeeded but its event has no result URLs: {event!r}")
        return task_summary(task_id, TaskState.SUCCESS.value, urls, event.get("input") or {})
    if status == "failed":
        raise ApikleyTaskFailedError(task_id, event.get("fail_code"), event.get("fail_message"))
    if status == "timeout":
        raise ApikleyTaskTimeoutError(str(event.get("message") or f"Apikley task {task_id} timed out"))
    if status == "error":
        raise ApikleyError(f"Waiting for Apikley task {task_id} failed: {event.get('message')}")
    raise ApikleyError(f"Unknown status {status!r} in the trigger event of Apikley task {task_id}")
