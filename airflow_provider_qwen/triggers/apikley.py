"""Waiting for an Apikley task in the triggerer, so no worker slot is held meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.polling import poll_delay, timeout_message
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
    be asked (after the hook's retries) or refused, with ``message``.

    :param apikley_task_id: the Apikley task to wait for.
    :param apikley_conn_id: the Airflow connection to Apikley.
    :param deadline: epoch seconds after which the wait ends with ``timeout``; ``None`` waits on.
    :param poll_interval: fixed seconds between queries; ``None`` follows Apikley's advised cadence.
    :param submitted_at: epoch seconds when the task was created, which sets the cadence.
    """

    def __init__(
        self,
        apikley_task_id: str,
        apikley_conn_id: str = ApikleyHook.default_conn_name,
        deadline: float | None = None,
        poll_interval: float | None = None,
        submitted_at: float | None = None,
    ) -> None:
        super().__init__()
        self.apikley_task_id = apikley_task_id
        self.apikley_conn_id = apikley_conn_id
        self.deadline = deadline
        self.poll_interval = poll_interval
        self.submitted_at = submitted_at if submitted_at is not None else time.time()

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
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the task ends or the deadline passes; yield exactly one event."""
        hook = ApikleyHook(self.apikley_conn_id)
        try:
            yield TriggerEvent(await self._wait(hook))
        finally:
            await hook.aclose()

    async def _wait(self, hook: ApikleyHook) -> dict[str, Any]:
        task_id = self.apikley_task_id
        try:
            while True:
                record = await hook.aget_task(task_id)
                if record.state.is_terminal:
                    return event_from_record(record)
                now = time.time()
                if self.deadline is not None and now >= self.deadline:
                    return {
                        "status": "timeout",
                        "apikley_task_id": task_id,
                        "message": timeout_message(task_id, record.state.value),
                    }
                delay = poll_delay(now - self.submitted_at, self.poll_interval)
                if self.deadline is not None:
                    delay = min(delay, self.deadline - now)
                self.log.debug("Apikley task %s is %s; next query in %.1fs", task_id, record.state.value, delay)
                await asyncio.sleep(delay)
        except Exception as err:
            return {"status": "error", "apikley_task_id": task_id, "message": f"{type(err).__name__}: {err}"}
