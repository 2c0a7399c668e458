"""
Waiting for an Apikley task: when to ask again, when to give up, what to expect.

:class:`TaskWait` makes every decision and does no I/O; the trigger (in the triggerer), the
blocking wait (:func:`wait_until_done`, in a worker) and the sensor's pokes are each a few lines
around it and the single status queries here (:func:`query`, :func:`aquery`), so they wait alike.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_qwen.exceptions import ApikleyError, ApikleyTaskTimeoutError
from airflow_provider_qwen.hooks.retries import ONE_TRY, Log, RetryPolicy, is_transient
from airflow_provider_qwen.models import TaskRecord

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


class WaitingTrigger(Protocol):
    """The arguments of a trigger that waits for Apikley tasks, as :func:`wait_settings` reads them."""

    apikley_conn_id: str
    model: str | None
    expected_duration: float | None
    deadline: float | None
    poll_interval: float | None
    max_consecutive_poll_errors: int

    @property
    def log(self) -> Log:
        """The trigger's logger."""


def wait_settings(trigger: WaitingTrigger) -> dict[str, Any]:
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
