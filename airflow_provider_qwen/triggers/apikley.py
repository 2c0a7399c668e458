"""
Waiting for an Apikley task: when to ask again, when to give up, and how the wait ends.

:class:`TaskWait` makes every decision of a wait. :class:`ApikleyTaskTrigger` waits in the
triggerer, so no worker slot is held meanwhile; :func:`wait_until_done` waits in the worker; the
sensor pokes. Each is a few lines around :class:`TaskWait`, so they wait alike.

:class:`TaskEvent` is the one contract between the trigger and the tasks that defer to it: built
here, sent as JSON primitives, parsed (and checked) here. :func:`task_summary` is the dict every
wait pushes to XCom, whichever way it waited.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from airflow_provider_qwen import _compat as compat
from airflow_provider_qwen.api_server.urls import task_page_url
from airflow_provider_qwen.exceptions import ApikleyError, ApikleyTaskFailedError, ApikleyTaskTimeoutError
from airflow_provider_qwen.hooks import DEFAULT_CONN_ID
from airflow_provider_qwen.hooks.retries import ONE_TRY, Log, RetryPolicy, is_transient
from airflow_provider_qwen.links import ApikleyTaskLink
from airflow_provider_qwen.models import TaskRecord, TaskState, is_task_id
from airflow_provider_qwen.results import with_stored_results

if TYPE_CHECKING:
    from airflow_provider_qwen.hooks.apikley import ApikleyHook

log = logging.getLogger(__name__)

#: (seconds since submit, shortest, longest wait): Apikley's advice for polling a task.
POLL_CADENCE: tuple[tuple[float, float, float], ...] = (
    (30.0, 2.0, 3.0),
    (120.0, 5.0, 10.0),
    (float("inf"), 15.0, 30.0),
)

#: A fixed poll interval varies by this fraction either way, so waits that started together
#: (a triggerer picking up thousands of triggers at once) do not go on polling in step.
POLL_INTERVAL_JITTER = 0.1

#: Backoff between status queries that failed.
QUERY_RETRY_POLICY = RetryPolicy()


def poll_delay(elapsed: float, poll_interval: float | None = None) -> float:
    """
    Seconds to wait before the next status query.

    :param elapsed: seconds since the task was submitted.
    :param poll_interval: an interval, varied by :data:`POLL_INTERVAL_JITTER` either way, that
        overrides Apikley's advised cadence (2-3 s for the first 30 s, 5-10 s until 2 minutes,
        15-30 s after that, with jitter).
    """
    if poll_interval is not None:
        return poll_interval * random.uniform(1 - POLL_INTERVAL_JITTER, 1 + POLL_INTERVAL_JITTER)
    shortest, longest = next((low, high) for until, low, high in POLL_CADENCE if elapsed < until)
    return random.uniform(shortest, longest)


def timeout_message(apikley_task_id: str, last_state: str | None) -> str:
    """Return what a user reads when waiting for a task ran out of time."""
    return (
        f"Apikley task {apikley_task_id} did not finish before the deadline "
        f"(last state: {last_state or 'unknown'}). It may still finish on Apikley's side "
        f"under that id."
    )


@dataclass(frozen=True)
class Done:
    """The task ended; here is its record."""

    record: TaskRecord


@dataclass(frozen=True)
class Sleep:
    """Ask again after this many seconds."""

    seconds: float


@dataclass(frozen=True)
class TimedOut:
    """The deadline passed first."""

    message: str


@dataclass
class TaskWait:
    """
    The decisions of one wait for an Apikley task, whoever runs the loop.

    A paid task keeps running on Apikley's side whatever happens to our queries, so a transient
    failure (429, 455, 5xx, network errors, malformed answers) slows the wait down with backoff and
    jitter; only ``max_consecutive_poll_errors`` of them in a row, or a permanent one, end it.

    :param apikley_task_id: the task waited for.
    :param submitted_at: epoch seconds when it was created, which sets the cadence.
    :param deadline: epoch seconds when the wait times out; ``None`` waits on.
    :param poll_interval: a fixed interval (with jitter) instead of Apikley's advised cadence.
    :param max_consecutive_poll_errors: failed queries in a row that end the wait; the last is raised.
    :param expected_duration: seconds the task is expected to take: the first query waits until
        then (counted from ``submitted_at``, so a wait that starts over does not wait twice), and
        the advised cadence counts from then.
    :param logger: where a failed query is reported (the task's or trigger's own log).
    """

    apikley_task_id: str
    submitted_at: float
    deadline: float | None = None
    poll_interval: float | None = None
    max_consecutive_poll_errors: int = 10
    expected_duration: float = 0.0
    logger: Log = field(default=log, repr=False)
    failures: int = field(default=0, init=False)
    last_state: str | None = field(default=None, init=False)

    @property
    def answer_due_at(self) -> float:
        """Epoch seconds when the task is expected to have ended."""
        return self.submitted_at + self.expected_duration

    def first_query_delay(self, now: float) -> float:
        """Seconds to wait at ``now`` before the first query: none once an answer is due."""
        due = self.answer_due_at if self.deadline is None else min(self.answer_due_at, self.deadline)
        return max(0.0, due - now)

    def after(self, outcome: TaskRecord | ApikleyError, now: float) -> Done | Sleep | TimedOut:
        """
        Return what to do after a query answered ``outcome`` (a record, or the error it raised) at ``now``.

        :raises ApikleyError: ``outcome`` itself, when it is permanent or the last of too many in a row.
        """
        if isinstance(outcome, ApikleyError):
            self.failures += 1
            if not is_transient(outcome) or self.failures >= self.max_consecutive_poll_errors:
                raise outcome
            delay = QUERY_RETRY_POLICY.wait_seconds(self.failures, outcome)
            self.logger.warning(
                "Query for Apikley task %s failed, %d of %d failures in a row allowed (%s); asking again in %.1f s",
                self.apikley_task_id,
                self.failures,
                self.max_consecutive_poll_errors - 1,
                outcome,
                delay,
            )
        else:
            self.failures = 0
            self._report(outcome, now)
            if outcome.state.is_terminal:
                return Done(outcome)
            self.last_state = outcome.state.value
            # never ask again before an answer is due (an expectation learned since the first query)
            delay = max(poll_delay(max(0.0, now - self.answer_due_at), self.poll_interval), self.answer_due_at - now)
        if self.deadline is None:
            return Sleep(delay)
        if now >= self.deadline:
            return TimedOut(timeout_message(self.apikley_task_id, self.last_state))
        return Sleep(min(delay, self.deadline - now))

    def _report(self, record: TaskRecord, now: float) -> None:
        """Log the task's state once per change, with the time since it was submitted."""
        if record.state.value != self.last_state:
            elapsed = now - self.submitted_at
            self.logger.info(
                "Apikley task %s is %s, %.0f s after submitting", self.apikley_task_id, record.state.value, elapsed
            )


class ExpectedDurations:
    """
    How long tasks took (``completeTime - createTime``), by connection and model, as this process saw them.

    The triggerer runs for days and sees every wait end, so it learns what to expect; a new
    process starts with no expectation and asks at Apikley's advised cadence until it has one.

    :param samples: durations kept per connection and model, newest first out.
    :param percentile: the fraction of kept durations the expectation covers.
    :param minimum_samples: durations needed before there is an expectation.
    """

    def __init__(self, samples: int = 50, percentile: float = 0.75, minimum_samples: int = 5) -> None:
        self.percentile = percentile
        self.minimum_samples = minimum_samples
        self._seen: dict[tuple[str, str], deque[float]] = defaultdict(lambda: deque(maxlen=samples))

    def note(self, apikley_conn_id: str, record: TaskRecord) -> None:
        """Remember how long a task that ended took, when Apikley said."""
        if record.complete_time and record.create_time and record.complete_time >= record.create_time:
            self._seen[(apikley_conn_id, record.model or "")].append((record.complete_time - record.create_time) / 1000)

    def expected(self, apikley_conn_id: str, model: str | None) -> float:
        """Seconds a task of ``model`` is expected to take; 0 until enough have been seen."""
        seen = sorted(self._seen.get((apikley_conn_id, model or ""), ()))
        if len(seen) < self.minimum_samples:
            return 0.0
        return seen[min(len(seen) - 1, int(self.percentile * len(seen)))]


#: What this process has seen; the trigger's first query waits for the expectation it gives.
EXPECTED_DURATIONS = ExpectedDurations()


def wait_settings(trigger: Any) -> dict[str, Any]:
    """Return the :class:`TaskWait` arguments a trigger sets, the expected duration learned unless given."""
    expected = trigger.expected_duration
    if expected is None:
        expected = EXPECTED_DURATIONS.expected(trigger.apikley_conn_id, trigger.model)
    return {
        "deadline": trigger.deadline,
        "poll_interval": trigger.poll_interval,
        "max_consecutive_poll_errors": trigger.max_consecutive_poll_errors,
        "expected_duration": expected,
        "logger": trigger.log,
    }


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
    :param credits_consumed: what the task cost, when Apikley said.
    :param result: Apikley's ``resultJson``, parsed, when it says more than ``resultUrls``.
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
        for name in ("fail_code", "fail_message", "message", "input", "credits_consumed", "result"):
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
            raise ApikleyTaskFailedError(self.apikley_task_id, self.fail_code, self.fail_message)
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
        return summary


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


#: Extra time a deferred task gives the trigger beyond its own deadline before Airflow gives up on it.
TRIGGER_GRACE = timedelta(minutes=5)

#: Seconds after the deferral before an event that resumes a worker is sent. Airflow 3.1-3.3 fail a
#: task whose trigger fires before the scheduler has read the executor's report on the run that
#: deferred (the report lands on the resumed, queued run: apache/airflow#66374, #72716); on a busy
#: scheduler that report comes seconds late. Tasks the trigger ends itself do not race.
RESUME_SETTLE_SECONDS = 10.0


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
    :param output_path: with ``end_task_on_success``, a folder URI to copy the results into first,
        as the operator's ``output_path`` does (in a thread, so the triggerer's loop goes on).
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
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the task ends or the deadline passes; yield exactly one event."""
        from airflow_provider_qwen.hooks.apikley import ApikleyHook  # HTTP clients: imported in the triggerer only

        hook = ApikleyHook(self.apikley_conn_id)
        try:
            event = await self._wait(hook)
        finally:
            await hook.aclose()
        if event.status is EventStatus.SUCCESS and self.end_task_on_success and await self._end_task(event):
            yield TaskSuccessEvent()
        else:
            await self._settle_before_resuming()
            yield TriggerEvent(event.to_payload())

    async def _settle_before_resuming(self) -> None:
        """Wait out :data:`RESUME_SETTLE_SECONDS` since the deferral, where a scheduler runs the task."""
        if getattr(self.task_instance, "run_id", None) is None:  # ``dag.test()``, or no task at all: no race
            return
        delay = self.submitted_at + RESUME_SETTLE_SECONDS - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _wait(self, hook: ApikleyHook) -> TaskEvent:
        wait = TaskWait(self.apikley_task_id, submitted_at=self.submitted_at, **wait_settings(self))
        try:
            await asyncio.sleep(wait.first_query_delay(time.time()))
            while True:
                # Neither the record nor the step outlives this line while the trigger sleeps.
                step = wait.after(await aquery(hook, self.apikley_task_id), time.time())
                if isinstance(step, Done):
                    EXPECTED_DURATIONS.note(self.apikley_conn_id, step.record)
                    with_input = self.with_input or self.end_task_on_success
                    return TaskEvent.ended(step.record, with_input=with_input)
                if isinstance(step, TimedOut):
                    return TaskEvent(EventStatus.TIMEOUT, self.apikley_task_id, message=step.message)
                await asyncio.sleep(step.seconds)
        except Exception as err:
            return TaskEvent(EventStatus.ERROR, self.apikley_task_id, message=f"{type(err).__name__}: {err}")

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
        from asgiref.sync import sync_to_async

        value = event.summary()
        if self.output_path:
            from airflow_provider_qwen.hooks.apikley import ApikleyHook

            try:  # blocking file writes, in a thread of their own
                value = await sync_to_async(with_stored_results, thread_sensitive=False)(
                    ApikleyHook(self.apikley_conn_id), value, self.output_path
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
            await sync_to_async(xcom_set)(key="return_value", value=value, _mapped_length=mapped_length, **where)
            await sync_to_async(xcom_set)(key=ApikleyTaskLink().xcom_key, value=link, **where)
        except Exception:
            self.log.exception(
                "Could not push the result of Apikley task %s; a worker resumes it", self.apikley_task_id
            )
            return False
        return True


async def aquery(hook: ApikleyHook, apikley_task_id: str) -> TaskRecord | ApikleyError:
    """One status query from an event loop, one try (the wait counts failures itself): the record, or the error."""
    try:
        return await hook.aget_task(apikley_task_id, retry_policy=ONE_TRY)
    except ApikleyError as err:
        return err


def query(hook: ApikleyHook, apikley_task_id: str) -> TaskRecord | ApikleyError:
    """One status query, one try: the record, or the error it raised."""
    try:
        return hook.get_task(apikley_task_id, retry_policy=ONE_TRY)
    except ApikleyError as err:
        return err


def wait_until_done(hook: ApikleyHook, wait: TaskWait) -> TaskRecord:
    """
    Block until the task ends and return its record; for waits that hold a worker slot.

    :raises ApikleyTaskTimeoutError: when the deadline passes first.
    :raises ApikleyError: a refusal, or the last of too many transient failures in a row.
    """
    time.sleep(wait.first_query_delay(time.time()))
    while True:
        step = wait.after(query(hook, wait.apikley_task_id), time.time())
        if isinstance(step, Done):
            return step.record
        if isinstance(step, TimedOut):
            raise ApikleyTaskTimeoutError(step.message)
        time.sleep(step.seconds)
