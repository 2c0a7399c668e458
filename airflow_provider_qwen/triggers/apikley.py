"""Waiting for an Apikley task in the triggerer, so no worker slot is held meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_qwen.exceptions import ApikleyError
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.hooks.retries import ONE_TRY
from airflow_provider_qwen.models import TaskRecord
from airflow_provider_qwen.polling import Done, TaskWait, TimedOut
from airflow_provider_qwen.triggers.events import EventStatus, TaskEvent

#: Extra time a deferred task gives the trigger beyond its own deadline before Airflow gives up on it.
TRIGGER_GRACE = timedelta(minutes=5)


class ApikleyTaskTrigger(BaseTrigger):
    """
    Poll an Apikley task until it ends or the deadline passes, then fire one event.

    The trigger only reads: it never creates a task, so a triggerer restart that runs it again
    from the start is harmless. Its arguments are JSON primitives; the API key is read from the
    connection inside the triggerer, never stored with the trigger.

    It fires one :class:`~airflow_provider_qwen.triggers.events.TaskEvent`: ``success`` with
    ``result_urls``; ``failed`` with ``fail_code`` and ``fail_message``; ``timeout`` when
    ``deadline`` passed first; ``error`` when Apikley could not be asked or refused, with ``message``.

    :param apikley_task_id: the Apikley task to wait for.
    :param apikley_conn_id: the Airflow connection to Apikley.
    :param deadline: epoch seconds after which the wait ends with ``timeout``; ``None`` waits on.
    :param poll_interval: seconds between queries, varied by up to 10% either way so that triggers
        picked up together do not poll in step; ``None`` follows Apikley's advised cadence.
    :param submitted_at: epoch seconds when the task was created, which sets the cadence.
    :param max_consecutive_poll_errors: status queries in a row that may fail transiently (429,
        455, 5xx, network errors, malformed answers) before the wait ends with ``error``; each
        failure backs off exponentially, with jitter. A refused key or an unknown task ends it at once.
    :param with_input: put the task's ``input`` (as Apikley echoes it) in the event, for a resuming
        side that has no copy of its own.
    """

    def __init__(
        self,
        apikley_task_id: str,
        apikley_conn_id: str = ApikleyHook.default_conn_name,
        deadline: float | None = None,
        poll_interval: float | None = None,
        submitted_at: float | None = None,
        max_consecutive_poll_errors: int = 10,
        with_input: bool = False,
    ) -> None:
        super().__init__()
        self.apikley_task_id = apikley_task_id
        self.apikley_conn_id = apikley_conn_id
        self.deadline = deadline
        self.poll_interval = poll_interval
        self.submitted_at = submitted_at if submitted_at is not None else time.time()
        self.max_consecutive_poll_errors = max_consecutive_poll_errors
        self.with_input = with_input

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """The trigger's class path and its arguments (JSON primitives only)."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "apikley_task_id": self.apikley_task_id,
                "apikley_conn_id": self.apikley_conn_id,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
                "submitted_at": self.submitted_at,
                "max_consecutive_poll_errors": self.max_consecutive_poll_errors,
                "with_input": self.with_input,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the task ends or the deadline passes; yield exactly one event."""
        hook = ApikleyHook(self.apikley_conn_id)
        try:
            yield TriggerEvent((await self._wait(hook)).to_payload())
        finally:
            await hook.aclose()

    async def _wait(self, hook: ApikleyHook) -> TaskEvent:
        wait = TaskWait(
            self.apikley_task_id,
            submitted_at=self.submitted_at,
            deadline=self.deadline,
            poll_interval=self.poll_interval,
            max_consecutive_poll_errors=self.max_consecutive_poll_errors,
            logger=self.log,
        )
        try:
            while True:
                # Neither the record nor the step outlives this line while the trigger sleeps.
                step = wait.after(await self._query(hook), time.time())
                if isinstance(step, Done):
                    return TaskEvent.ended(step.record, with_input=self.with_input)
                if isinstance(step, TimedOut):
                    return TaskEvent(EventStatus.TIMEOUT, self.apikley_task_id, message=step.message)
                await asyncio.sleep(step.seconds)
        except Exception as err:
            return TaskEvent(EventStatus.ERROR, self.apikley_task_id, message=f"{type(err).__name__}: {err}")

    async def _query(self, hook: ApikleyHook) -> TaskRecord | ApikleyError:
        # One try per query: the wait counts failures across queries itself.
        try:
            return await hook.aget_task(self.apikley_task_id, retry_policy=ONE_TRY)
        except ApikleyError as err:
            return err
