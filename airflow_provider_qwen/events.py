"""
How a wait for an Apikley task ends, and what every wait pushes to XCom.

:class:`TaskEvent` is the one contract between the trigger and the tasks that defer to it: built,
sent as JSON primitives, parsed and checked here. :func:`task_summary` is the dict every wait
pushes to XCom, whichever way it waited.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from airflow_provider_qwen.exceptions import ApikleyError, ApikleyTaskFailedError, ApikleyTaskTimeoutError
from airflow_provider_qwen.models import TaskRecord, TaskState
from airflow_provider_qwen.names import check_file_name
from airflow_provider_qwen.validation import is_task_id


class EventStatus(StrEnum):
    """How the wait ended."""

    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ERROR = "error"


#: The key of a summary that names the earlier try's task this try's task replaced.
REPLACED_KEY = "replaced_apikley_task_id"

#: What a deferred operator resumes with: its :class:`TaskEvent`'s payload; or ``"success"``, the
#: state a ``TaskSuccessEvent`` carries, when its trigger ended the task itself and a runner resumed
#: it anyway (``dag.test()``).
ResumeEvent = dict[str, Any] | str | None


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
    :param credits_consumed: what the task cost, when Apikley said.
    :param result: Apikley's ``resultJson``, parsed, when it says more than ``resultUrls``.
    :param replaced_apikley_task_id: a task an earlier try created for another request, which the
        try that deferred abandoned (see :func:`with_replaced`).
    :param output_path: the folder URI the resuming side copies the results into, as the deferring
        side worked it out; carried here because ``airflow dags test`` resumes with the event alone.
    :param result_name: what the results are called there (see
        :func:`~airflow_provider_qwen.results.result_name`), as the deferring side worked it out.
    """

    status: EventStatus
    apikley_task_id: str
    result_urls: tuple[str, ...] = ()
    fail_code: str | None = None
    fail_message: str | None = None
    message: str | None = None
    input: dict[str, Any] | None = field(default=None, compare=False)
    credits_consumed: float | None = None
    result: dict[str, Any] | None = field(default=None, compare=False)
    replaced_apikley_task_id: str | None = None
    output_path: str | None = None
    result_name: str | None = None

    @classmethod
    def ended(cls, record: TaskRecord, *, with_input: bool = False) -> TaskEvent:
        """Return the event of a task that ended, successfully or not."""
        succeeded = record.state is TaskState.SUCCESS
        return cls(
            status=EventStatus.SUCCESS if succeeded else EventStatus.FAILED,
            apikley_task_id=record.task_id,
            result_urls=tuple(record.result_urls) if succeeded else (),
            fail_code=None if succeeded else record.fail_code,
            fail_message=None if succeeded else record.fail_message,
            input=record.input if with_input else None,
            credits_consumed=record.credits_consumed,
            result=record.result_beyond_urls if succeeded else None,
        )

    def to_payload(self) -> dict[str, Any]:
        """Return the event as JSON primitives, without the fields that do not apply."""
        payload: dict[str, Any] = {"status": self.status.value, "apikley_task_id": self.apikley_task_id}
        if self.status is EventStatus.SUCCESS:
            payload["result_urls"] = list(self.result_urls)
        optional = (
            "fail_code",
            "fail_message",
            "message",
            "input",
            "credits_consumed",
            "result",
            "output_path",
            "result_name",
        )
        for name in (*optional, REPLACED_KEY):
            if getattr(self, name) is not None:
                payload[name] = getattr(self, name)
        return payload

    @classmethod
    def from_payload(cls, payload: object) -> TaskEvent:
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
            status = EventStatus(str(payload.get("status")))
        except ValueError:
            raise ApikleyError(
                f"Unknown status {payload.get('status')!r} in the trigger event of Apikley task {task_id}"
            ) from None
        urls = payload.get("result_urls", [])
        if status is EventStatus.SUCCESS and (
            "result_urls" not in payload or not isinstance(urls, list) or not all(isinstance(u, str) for u in urls)
        ):
            raise ApikleyError(f"Apikley task {task_id} succeeded but its event has no result URLs: {payload!r}")
        credits = payload.get("credits_consumed")
        if credits is not None and (isinstance(credits, bool) or not isinstance(credits, (int, float))):
            raise ApikleyError(f"Apikley task {task_id}: credits_consumed={credits!r} in its event is not a number")
        result = payload.get("result")
        if result is not None and not isinstance(result, dict):
            raise ApikleyError(f"Apikley task {task_id}: the result in its event is not an object: {result!r}")
        replaced = payload.get(REPLACED_KEY)
        if replaced is not None and not is_task_id(replaced):
            raise ApikleyError(f"Apikley task {task_id}: {REPLACED_KEY}={replaced!r} in its event is not a task id")
        output_path = payload.get("output_path")
        if output_path is not None and not isinstance(output_path, str):
            raise ApikleyError(f"Apikley task {task_id}: output_path={output_path!r} in its event is not a URI string")
        result_name = payload.get("result_name")
        if result_name is not None:
            try:
                check_file_name(result_name, field="result_name")
            except ApikleyError as err:
                raise ApikleyError(f"Apikley task {task_id}: in its event, {err}") from None
        return cls(
            status=status,
            apikley_task_id=task_id,
            result_urls=tuple(urls) if status is EventStatus.SUCCESS else (),
            fail_code=payload.get("fail_code"),
            fail_message=payload.get("fail_message"),
            message=payload.get("message"),
            input=payload.get("input"),
            credits_consumed=credits,
            result=result,
            replaced_apikley_task_id=replaced,
            output_path=output_path,
            result_name=result_name,
        )

    def summary(self, input: dict[str, Any] | None = None) -> dict[str, Any]:
        """
        Return the task's XCom value, for a ``success`` event.

        :param input: the task's input; by default the one the event carries, if any.
        :raises ApikleyTaskFailedError: for ``failed``.
        :raises ApikleyTaskTimeoutError: for ``timeout``.
        :raises ApikleyError: for ``error``.
        """
        if self.status is EventStatus.FAILED:
            raise ApikleyTaskFailedError(self.apikley_task_id, self.fail_code, self.fail_message, self.credits_consumed)
        if self.status is EventStatus.TIMEOUT:
            raise ApikleyTaskTimeoutError(self.message or f"Apikley task {self.apikley_task_id} timed out")
        if self.status is EventStatus.ERROR:
            raise ApikleyError(f"Waiting for Apikley task {self.apikley_task_id} failed: {self.message}")
        chosen = input if input is not None else self.input or {}
        summary = task_summary(
            self.apikley_task_id, TaskState.SUCCESS.value, self.result_urls, chosen, self.credits_consumed
        )
        if self.result is not None:
            summary["result"] = self.result
        return with_replaced(summary, self.replaced_apikley_task_id)


def task_summary(
    apikley_task_id: str,
    state: str,
    result_urls: list[str] | tuple[str, ...],
    input: dict[str, Any],
    credits_consumed: float | None = None,
) -> dict[str, Any]:
    """
    Return the XCom value of an edit: small, JSON only.

    :return: ``apikley_task_id``, ``state``, ``result_urls``, the ``input`` of the task and the
        ``credits_consumed`` (``None`` until the task has ended, or when Apikley did not say).
    """
    return {
        "apikley_task_id": apikley_task_id,
        "state": state,
        "result_urls": list(result_urls),
        "input": dict(input),
        "credits_consumed": credits_consumed,
    }


def with_replaced(summary: dict[str, Any], replaced_apikley_task_id: str | None) -> dict[str, Any]:
    """
    Return ``summary`` saying which earlier task it replaced, if any.

    :param replaced_apikley_task_id: a task an earlier try created (and paid for) for another
        request, abandoned when this try submitted anew; it goes in as ``replaced_apikley_task_id``.
    """
    if replaced_apikley_task_id is not None:
        summary[REPLACED_KEY] = replaced_apikley_task_id
    return summary


def outcome_line(summary: dict[str, Any]) -> str:
    """
    Return the last line an edit's log gives about it, the same whichever way the task ended.

    :param summary: a successful task's XCom value (see :func:`task_summary`).
    """
    results = len(summary["result_urls"])
    line = f"Apikley task {summary['apikley_task_id']} succeeded: {results} result{'s' if results != 1 else ''}"
    if stored := summary.get("stored"):
        line += f", stored as {', '.join(item['uri'] for item in stored)}"
    credits = summary.get("credits_consumed")
    return line + (f"; {credits:g} credits" if credits is not None else "")


def summary_from_record(record: TaskRecord) -> dict[str, Any]:
    """
    Return the summary of a task that ended, read without a trigger (a blocking wait, a poke).

    :raises ApikleyTaskFailedError: when it ended in ``fail``.
    :raises ApikleyError: when it has not ended.
    """
    if not record.state.is_terminal:
        raise ApikleyError(f"Apikley task {record.task_id} has not ended yet (state {record.state.value})")
    return TaskEvent.ended(record, with_input=True).summary()
