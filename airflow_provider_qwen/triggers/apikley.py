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
from airflow_provider_qwen.hooks.retries import RetryPolicy
from airflow_provider_qwen.models import TaskRecord
from airflow_provider_qwen.polling import QueryErrorBudget, poll_delay, timeout_message
from airflow_provider_qwen.results import event_from_record

#: Extra time a deferred task gives the trigger beyond its own deadline before Airflow gives up on it.
TRIGGER_GRACE = timedelta(minutes=5)


class ApikleyTaskTrigger(BaseTrigger):
    """
    Poll an Apikley task until it ends or the deadline passes, then fire one event.

    The trigger only reads: it never creates a task, so a triggerer restart that runs it again
    from the start is harmless. Its arguments are JSON primitives; the API key is read from the
    connection inside the triggerer, never stored with the trigger.

    Events (one per run): ``success`` with ``result_urls``; ``failed`` with ``fail_code`` and
    ``fail_message``; ``timeout`` when ``deadline`` passed first; ``error`` when Apikley could not
    be asked or refused, with ``message``.

    :param apikley_task_id: the Apikley task to wait for.
    :param apikley_conn_id: the Airflow connection to Apikley.
    :param deadline: epoch seconds after which the wait ends with ``timeout``; ``None`` waits on.
    :param poll_interval: seconds between queries, varied by up to 10% either way so that triggers
        picked up together do not poll in step; ``None`` follows Apikley's advised cadence.
    :param submitted_at: epoch seconds when the task was created, which sets the cadence.
    :param max_consecutive_errors: status queries in a row that may fail transiently (429, 455,
        5xx, network errors, malformed answers) before the wait ends with ``error``; each failure
        backs off exponentially, with jitter. A refused key or an unknown task ends it at once.
    """

    def __init__(
        self,
        apikley_task_id: str,
        apikley_conn_id: str = ApikleyHook.default_conn_name,
        deadline: float | None = None,
        poll_interval: float | None = None,
        submitted_at: float | None = None,
        max_consecutive_errors: int = 10,
    ) -> None:
        super().__init__()
        self.apikley_task_id = apikley_task_id
        self.apikley_conn_id = apikley_conn_id
        self.deadline = deadline
        self.poll_interval = poll_interval
        self.submitted_at = submitted_at if submitted_at is not None else time.time()
        self.max_consecutive_errors = max_consecutive_errors

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
                "max_consecutive_errors": self.max_consecutive_errors,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the task ends or the deadline passes; yield exactly one event."""
        # One try per query: the trigger counts consecutive failures itself, across queries.
        hook = ApikleyHook(self.apikley_conn_id, retry_policy=RetryPolicy(attempts=1))
        try:
            yield TriggerEvent(await self._wait(hook))
        finally:
            await hook.aclose()

    async def _wait(self, hook: ApikleyHook) -> dict[str, Any]:
        task_id = self.apikley_task_id
        errors = QueryErrorBudget(self.max_consecutive_errors)
        last_state = None
        try:
            while True:
                try:
                    # The record is never bound here, so it does not live on through the sleep.
                    event, delay, last_state = self._read(await hook.aget_task(task_id))
                except ApikleyError as err:
                    delay = errors.backoff_after(err)
                    self.log.warning(
                        "Query %d for Apikley task %s failed (%s); retrying", errors.failures, task_id, err
                    )
                else:
                    errors.reset()
                    if event is not None:
                        return event
                now = time.time()
                if self.deadline is not None:
                    if now >= self.deadline:
                        message = timeout_message(task_id, last_state)
                        return {"status": "timeout", "apikley_task_id": task_id, "message": message}
                    delay = min(delay, self.deadline - now)
                await asyncio.sleep(delay)
        except Exception as err:
            return {"status": "error", "apikley_task_id": task_id, "message": f"{type(err).__name__}: {err}"}

    def _read(self, record: TaskRecord) -> tuple[dict[str, Any] | None, float, str]:
        """The event if the task ended, else the seconds until the next query; and the state seen."""
        if record.state.is_terminal:
            return event_from_record(record), 0.0, record.state.value
        return None, poll_delay(time.time() - self.submitted_at, self.poll_interval), record.state.value
