"""
How a wait for an Apikley task ends, and what the task gets from it.

:class:`TaskEvent` is the one contract between :class:`~airflow_provider_qwen.triggers.apikley.ApikleyTaskTrigger`
and the operators that defer to it: built here, sent as JSON primitives, parsed (and checked) here.
:func:`task_summary` is the dict every wait pushes to XCom, whichever way it waited.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from airflow_provider_qwen.exceptions import ApikleyError, ApikleyTaskFailedError, ApikleyTaskTimeoutError
from airflow_provider_qwen.models import TaskRecord, TaskState, is_task_id


class EventStatus(StrEnum):
    """How the wait ended."""

    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ERROR = "error"


@dataclass(frozen=True)
class TaskEvent:
    """
    The one event a trigger fires for an Apikley task. No key, no image bytes.

    :param status: how the wait ended.
    :param apikley_task_id: the task waited for.
    :param result_urls: the results, for ``success``.
    :param fail_code: Apikley's ``failCode``, for ``failed``.
    :param fail_message: Apikley's ``failMsg``, for ``failed``.
    :param message: what went wrong, for ``timeout`` and ``error``.
    :param input: the task's ``input`` as Apikley echoes it, only when the resuming side asked for it.
    """

    status: EventStatus
    apikley_task_id: str
    result_urls: tuple[str, ...] = ()
    fail_code: str | None = None
    fail_message: str | None = None
    message: str | None = None
    input: dict[str, Any] | None = field(default=None, compare=False)

    @classmethod
    def ended(cls, record: TaskRecord, *, with_input: bool = False) -> TaskEvent:
        """The event of a task that ended, successfully or not."""
        succeeded = record.state is TaskState.SUCCESS
        return cls(
            status=EventStatus.SUCCESS if succeeded else EventStatus.FAILED,
            apikley_task_id=record.task_id,
            result_urls=tuple(record.result_urls) if succeeded else (),
            fail_code=None if succeeded else record.fail_code,
            fail_message=None if succeeded else record.fail_message,
            input=record.input if with_input else None,
        )

    def to_payload(self) -> dict[str, Any]:
        """The event as JSON primitives, without the fields that do not apply."""
        payload: dict[str, Any] = {"status": self.status.value, "apikley_task_id": self.apikley_task_id}
        if self.status is EventStatus.SUCCESS:
            payload["result_urls"] = list(self.result_urls)
        for name in ("fail_code", "fail_message", "message", "input"):
            if getattr(self, name) is not None:
                payload[name] = getattr(self, name)
        return payload

    @classmethod
    def from_payload(cls, payload: Any) -> TaskEvent:
        """
        Check a payload the trigger sent.

        :raises ApikleyError: naming what is wrong, for anything this trigger does not send.
        """
        if not isinstance(payload, dict):
            raise ApikleyError(f"Expected an Apikley trigger event (a dict), got {payload!r}")
        task_id = payload.get("apikley_task_id")
        if not is_task_id(task_id):
            raise ApikleyError(f"Apikley trigger event without a task id of the right shape: {payload!r}")
        try:
            status = EventStatus(payload.get("status"))
        except ValueError:
            raise ApikleyError(
                f"Unknown status {payload.get('status')!r} in the trigger event of Apikley task {task_id}"
            ) from None
        urls = payload.get("result_urls", [])
        if status is EventStatus.SUCCESS and (
            "result_urls" not in payload or not isinstance(urls, list) or not all(isinstance(u, str) for u in urls)
        ):
            raise ApikleyError(f"Apikley task {task_id} succeeded but its event has no result URLs: {payload!r}")
        return cls(
            status=status,
            apikley_task_id=task_id,
            result_urls=tuple(urls) if status is EventStatus.SUCCESS else (),
            fail_code=payload.get("fail_code"),
            fail_message=payload.get("fail_message"),
            message=payload.get("message"),
            input=payload.get("input"),
        )

    def summary(self, input: dict[str, Any] | None = None) -> dict[str, Any]:
        """
        The task's XCom value, for a ``success`` event.

        :param input: the task's input; by default the one the event carries, if any.
        :raises ApikleyTaskFailedError: for ``failed``.
        :raises ApikleyTaskTimeoutError: for ``timeout``.
        :raises ApikleyError: for ``error``.
        """
        if self.status is EventStatus.FAILED:
            raise ApikleyTaskFailedError(self.apikley_task_id, self.fail_code, self.fail_message)
        if self.status is EventStatus.TIMEOUT:
            raise ApikleyTaskTimeoutError(self.message or f"Apikley task {self.apikley_task_id} timed out")
        if self.status is EventStatus.ERROR:
            raise ApikleyError(f"Waiting for Apikley task {self.apikley_task_id} failed: {self.message}")
        chosen = input if input is not None else self.input or {}
        return task_summary(self.apikley_task_id, TaskState.SUCCESS.value, self.result_urls, chosen)


def task_summary(
    apikley_task_id: str, state: str, result_urls: list[str] | tuple[str, ...], input: dict[str, Any]
) -> dict[str, Any]:
    """
    The XCom value of an edit: small, JSON only.

    :return: ``apikley_task_id``, ``state``, ``result_urls`` and the ``input`` of the task.
    """
    return {"apikley_task_id": apikley_task_id, "state": state, "result_urls": list(result_urls), "input": dict(input)}


def summary_from_record(record: TaskRecord) -> dict[str, Any]:
    """
    The summary of a task that ended, read without a trigger (a blocking wait, a poke).

    :raises ApikleyTaskFailedError: when it ended in ``fail``.
    :raises ApikleyError: when it has not ended.
    """
    if not record.state.is_terminal:
        raise ApikleyError(f"Apikley task {record.task_id} has not ended yet (state {record.state.value})")
    return TaskEvent.ended(record, with_input=True).summary()
