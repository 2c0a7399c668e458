"""
:class:`ApikleyTaskTrigger`: the wait for an Apikley task in the triggerer, holding no worker slot.

Its decisions are :class:`~airflow_provider_qwen.waits.TaskWait`'s; how it ends is a
:class:`~airflow_provider_qwen.events.TaskEvent`, or, when nothing is left for a worker, the task
itself ended here with its results stored and its XCom pushed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowConfigException, conf
from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from airflow_provider_qwen import _compat as compat
from airflow_provider_qwen import waits
from airflow_provider_qwen.api_server.urls import task_page_url
from airflow_provider_qwen.callback_waits import (
    callback_fallback_seconds,
    delivered_or_slept,
    delivered_record,
    delivery_watch,
    slow_fallback,
)
from airflow_provider_qwen.events import EventStatus, TaskEvent, outcome_line
from airflow_provider_qwen.exceptions import ApikleyConfigurationError
from airflow_provider_qwen.hooks import DEFAULT_CONN_ID
from airflow_provider_qwen.links import ApikleyTaskLink
from airflow_provider_qwen.redaction import shown_setting, without_credentials
from airflow_provider_qwen.results import with_stored_results
from airflow_provider_qwen.threads import in_thread
from airflow_provider_qwen.waits import Done, TaskWait, TimedOut, aquery, wait_settings

if TYPE_CHECKING:
    from airflow_provider_qwen.hooks.apikley import ApikleyHook


#: Extra time a deferred task gives the trigger beyond its own deadline before Airflow gives up on it.
TRIGGER_GRACE = timedelta(minutes=5)

#: Seconds after the deferral before an event that resumes a worker is sent, unless
#: ``[apikley] resume_settle_seconds`` says otherwise. Airflow 3.1-3.3 fail a task whose trigger
#: fires before the scheduler has read the executor's report on the run that deferred (the report
#: lands on the resumed, queued run: apache/airflow#66374, #72716); on a busy scheduler that report
#: comes seconds late. Tasks the trigger ends itself do not race.
RESUME_SETTLE_SECONDS = 10.0

#: The ``[apikley]`` option that sets how long after its deferral a task may be resumed.
RESUME_SETTLE_OPTION = "resume_settle_seconds"


def resume_settle_seconds() -> float:
    """
    Return ``[apikley] resume_settle_seconds``: :data:`RESUME_SETTLE_SECONDS` unless configured.

    :raises ApikleyConfigurationError: naming the option (and its value, when a number), when it is not a
        number of seconds, 0 or more.
    """
    try:
        seconds = conf.getfloat("apikley", RESUME_SETTLE_OPTION, fallback=RESUME_SETTLE_SECONDS)
    except (AirflowConfigException, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raw = conf.get("apikley", RESUME_SETTLE_OPTION, fallback=None)
        raise ApikleyConfigurationError(
            f"[apikley] {shown_setting(RESUME_SETTLE_OPTION, raw)}: must be a number of seconds, 0 or more "
            f"(default {RESUME_SETTLE_SECONDS:g})"
        )
    return seconds


def settle_delay(deferred_at: float, now: float) -> float:
    """
    Seconds to wait at ``now`` before resuming a worker for a task that deferred at ``deferred_at``.

    :raises ApikleyConfigurationError: when ``[apikley] resume_settle_seconds`` is not usable.
    """
    return max(0.0, deferred_at + resume_settle_seconds() - now)


async def settle_before_resuming(trigger: BaseTrigger, deferred_at: float) -> None:
    """Wait out ``[apikley] resume_settle_seconds`` since the deferral, where a scheduler runs the task."""
    if getattr(trigger.task_instance, "run_id", None) is None:  # ``dag.test()``, or no task at all: no race
        return
    if (delay := settle_delay(deferred_at, time.time())) > 0:
        await asyncio.sleep(delay)


class ApikleyTaskTrigger(BaseTrigger):
    """
    Poll an Apikley task until it ends or the deadline passes, then fire one event.

    The trigger only reads: it never creates a task, so a triggerer restart that runs it again
    from the start is harmless. Its arguments are JSON primitives; the API key is read from the
    connection inside the triggerer, never stored with the trigger.

    It fires one :class:`TaskEvent`: ``success`` with ``result_urls``; ``failed`` with
    ``fail_code`` and ``fail_message``; ``timeout`` when ``deadline`` passed first; ``error`` when
    Apikley could not be asked or refused, with ``message``. With ``end_task_on_success`` a success
    ends the task from here instead: its XCom value is pushed and the task marked successful, so
    no worker runs again for it.

    The first query waits until an answer is due: ``submitted_at`` plus ``expected_duration``, or
    plus what this triggerer has learned tasks of ``model`` take (see :class:`ExpectedDurations`).

    :param apikley_task_id: the Apikley task to wait for.
    :param apikley_conn_id: the Airflow connection to Apikley.
    :param deadline: epoch seconds after which the wait ends with ``timeout``; ``None`` waits on.
    :param poll_interval: seconds between queries, varied by up to 10% either way so that triggers
        picked up together do not poll in step; ``None`` follows Apikley's advised cadence.
    :param submitted_at: epoch seconds when the task was created, which sets the cadence.
    :param deferred_at: epoch seconds when the task deferred, from which an event that resumes a
        worker waits ``[apikley] resume_settle_seconds``; ``None`` (a trigger an older provider
        deferred to) counts from ``submitted_at``.
    :param max_consecutive_poll_errors: status queries in a row that may fail transiently (429,
        455, 5xx, network errors, malformed answers) before the wait ends with ``error``; each
        failure backs off exponentially, with jitter. A refused key or an unknown task ends it at once.
    :param with_input: put the task's ``input`` (as Apikley echoes it) in the event, for a resuming
        side that has no copy of its own.
    :param model: the task's model, whose usual duration sets the first query.
    :param expected_duration: seconds the task is expected to take; ``None`` uses what was learned.
    :param end_task_on_success: end the deferred task from the triggerer when the edit succeeds.
    :param maps_over_result: downstream tasks map over the task's XCom value, so its length is
        recorded with it, as a worker records it.
    :param replaced_apikley_task_id: a task an earlier try created for another request, which the
        deferring try abandoned: the event (and the value pushed from here) names it.
    :param output_path: the folder URI the results are to be copied into. With
        ``end_task_on_success`` they are copied here first, as the operator's ``output_path`` does
        (in a thread, so the triggerer's loop goes on); otherwise it travels back in the event, for
        the worker that resumes (``airflow dags test`` resumes with the event alone).
    :param result_name: what the results are called in ``output_path`` (see
        :func:`~airflow_provider_qwen.results.result_name`; ``None``: ``<apikley_task_id>-<n>``), as
        the deferring side worked it out; it travels back in the event likewise.
    :param awaits_callback: the task was created with this deployment's
        :func:`~airflow_provider_qwen.api_server.urls.callback_url`: the wait ends when the receiver
        is called back (see :mod:`~airflow_provider_qwen.callback_waits`), and asks Apikley itself
        only every ``[apikley] callback_fallback_seconds``, in case the callback never comes.
    """

    def __init__(
        self,
        apikley_task_id: str,
        apikley_conn_id: str = DEFAULT_CONN_ID,
        deadline: float | None = None,
        poll_interval: float | None = None,
        submitted_at: float | None = None,
        max_consecutive_poll_errors: int = 10,
        with_input: bool = False,
        model: str | None = None,
        expected_duration: float | None = None,
        end_task_on_success: bool = False,
        maps_over_result: bool = False,
        output_path: str | None = None,
        replaced_apikley_task_id: str | None = None,
        deferred_at: float | None = None,
        result_name: str | None = None,
        awaits_callback: bool = False,
    ) -> None:
        super().__init__()
        self.apikley_task_id = apikley_task_id
        self.apikley_conn_id = apikley_conn_id
        self.deadline = deadline
        self.poll_interval = poll_interval
        self.submitted_at = submitted_at if submitted_at is not None else time.time()
        self.max_consecutive_poll_errors = max_consecutive_poll_errors
        self.with_input = with_input
        self.model = model
        self.expected_duration = expected_duration
        self.end_task_on_success = end_task_on_success
        self.maps_over_result = maps_over_result
        self.output_path = output_path
        self.replaced_apikley_task_id = replaced_apikley_task_id
        self.deferred_at = deferred_at
        self.result_name = result_name
        self.awaits_callback = awaits_callback

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the trigger's class path and its arguments (JSON primitives only)."""
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
                "model": self.model,
                "expected_duration": self.expected_duration,
                "end_task_on_success": self.end_task_on_success,
                "maps_over_result": self.maps_over_result,
                "output_path": self.output_path,
                "replaced_apikley_task_id": self.replaced_apikley_task_id,
                "deferred_at": self.deferred_at,
                "result_name": self.result_name,
                "awaits_callback": self.awaits_callback,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the task ends or the deadline passes; yield exactly one event."""
        from airflow_provider_qwen.hooks.apikley import ApikleyHook  # HTTP clients: imported in the triggerer only

        resume_settle_seconds()  # a misconfigured delay fails the wait now, not once it is over
        if self.awaits_callback:
            callback_fallback_seconds()
        hook = ApikleyHook(self.apikley_conn_id)
        try:
            event = replace(await self._wait(hook), replaced_apikley_task_id=self.replaced_apikley_task_id)
        finally:
            await hook.aclose()
        if event.status is EventStatus.SUCCESS and self.end_task_on_success and await self._end_task(event):
            yield TaskSuccessEvent()
        else:
            deferred_at = self.deferred_at if self.deferred_at is not None else self.submitted_at
            await settle_before_resuming(self, deferred_at=deferred_at)
            carried = dataclasses.replace(event, output_path=self.output_path, result_name=self.result_name)
            yield TriggerEvent(carried.to_payload())

    async def _wait(self, hook: ApikleyHook) -> TaskEvent:
        wait = TaskWait(self.apikley_task_id, submitted_at=self.submitted_at, **wait_settings(self))
        watch = delivery_watch(self.apikley_conn_id) if self.awaits_callback else None
        delivered = watch.subscribe(self.apikley_task_id) if watch else None
        try:
            now = time.time()
            first = slow_fallback(wait.first_query_delay(now), watch, self.deadline, now)
            await delivered_or_slept(first, [delivered] if delivered else [], watch)
            while True:
                # Neither the record nor the step outlives this line while the trigger sleeps.
                outcome = delivered_record(delivered) or await aquery(hook, self.apikley_task_id)
                step = wait.after(outcome, now := time.time())
                if isinstance(step, Done):
                    waits.EXPECTED_DURATIONS.note(self.apikley_conn_id, step.record)
                    with_input = self.with_input or self.end_task_on_success
                    return TaskEvent.ended(step.record, with_input=with_input)
                if isinstance(step, TimedOut):
                    return TaskEvent(EventStatus.TIMEOUT, self.apikley_task_id, message=step.message)
                pause = slow_fallback(step.seconds, watch, self.deadline, now)
                await delivered_or_slept(pause, [delivered] if delivered else [], watch)
        except Exception as err:
            message = without_credentials(f"{type(err).__name__}: {err}")  # events are stored and shown as they are
            return TaskEvent(EventStatus.ERROR, self.apikley_task_id, message=message)
        finally:
            if watch is not None and delivered is not None:
                watch.unsubscribe(self.apikley_task_id, delivered)

    async def _end_task(self, event: TaskEvent) -> bool:
        """
        Store the results and push the task's XCom value and extra link as its worker would.

        Return ``False`` when that cannot be done from here, and a worker resumes the task instead.

        The value goes through the Task SDK's XCom API, not ``TaskSuccessEvent(xcoms=...)``: that
        stores it as a JSON string and records no mapped length, so downstream tasks could not map
        over it (see :func:`airflow_provider_qwen._compat.trigger_xcom_set`). Where the trigger runs
        without a task instance (``dag.test()``), a worker resumes.
        """
        ti = self.task_instance
        xcom_set = compat.trigger_xcom_set()
        if ti is None or not hasattr(ti, "run_id") or xcom_set is None:
            return False
        value = event.summary()
        if self.output_path:
            from airflow_provider_qwen.hooks.apikley import ApikleyHook

            try:  # blocking file writes, in a thread of their own
                value = await in_thread(
                    with_stored_results, ApikleyHook(self.apikley_conn_id), value, self.output_path, self.result_name
                )
            except Exception:
                self.log.exception("Could not store the results of task %s; a worker resumes it", self.apikley_task_id)
                return False
        # Logged before the pushes: the triggerer files a trigger's log lines under its task only
        # until the trigger has ended, and reads them apart from its events, so lines logged just
        # before the end can land in the triggerer's own log instead.
        self.log.info("Apikley task %s succeeded; ending the task from the triggerer", self.apikley_task_id)
        self.log.info("%s", outcome_line(value))
        where = {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id, "map_index": ti.map_index}
        link = task_page_url(self.apikley_conn_id, self.apikley_task_id)
        try:
            mapped_length = len(value) if self.maps_over_result else None
            await in_thread(xcom_set, key="return_value", value=value, mapped_length=mapped_length, **where)
            await in_thread(xcom_set, key=ApikleyTaskLink().xcom_key, value=link, **where)
        except Exception:
            self.log.exception(
                "Could not push the result of Apikley task %s; a worker resumes it", self.apikley_task_id
            )
            return False
        return True
