"""
How to wait for an Apikley task: when to ask again, when to give up.

:class:`TaskWait` makes every decision of a wait; the trigger, the blocking wait below and the
sensor's pokes are each a few lines around it, so they wait alike.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_provider_qwen.exceptions import ApikleyError, ApikleyTaskTimeoutError
from airflow_provider_qwen.hooks.retries import ONE_TRY, RetryPolicy, is_transient

if TYPE_CHECKING:
    from airflow_provider_qwen.hooks.apikley import ApikleyHook
    from airflow_provider_qwen.models import TaskRecord

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
    """What a user reads when waiting for a task ran out of time."""
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
    :param logger: where a failed query is reported (the task's or trigger's own log).
    """

    apikley_task_id: str
    submitted_at: float
    deadline: float | None = None
    poll_interval: float | None = None
    max_consecutive_poll_errors: int = 10
    logger: logging.Logger = field(default=log, repr=False)
    failures: int = field(default=0, init=False)
    last_state: str | None = field(default=None, init=False)

    def after(self, outcome: TaskRecord | ApikleyError, now: float) -> Done | Sleep | TimedOut:
        """
        What to do after a query answered ``outcome`` (a record, or the error it raised) at ``now``.

        :raises ApikleyError: ``outcome`` itself, when it is permanent or the last of too many in a row.
        """
        if isinstance(outcome, ApikleyError):
            self.failures += 1
            if not is_transient(outcome) or self.failures >= self.max_consecutive_poll_errors:
                raise outcome
            self.logger.warning(
                "Query %d for Apikley task %s failed (%s); asking again", self.failures, self.apikley_task_id, outcome
            )
            delay = QUERY_RETRY_POLICY.wait_seconds(self.failures, outcome)
        else:
            self.failures = 0
            if outcome.state.is_terminal:
                return Done(outcome)
            self.last_state = outcome.state.value
            delay = poll_delay(now - self.submitted_at, self.poll_interval)
        if self.deadline is None:
            return Sleep(delay)
        if now >= self.deadline:
            return TimedOut(timeout_message(self.apikley_task_id, self.last_state))
        return Sleep(min(delay, self.deadline - now))


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
    while True:
        step = wait.after(query(hook, wait.apikley_task_id), time.time())
        if isinstance(step, Done):
            return step.record
        if isinstance(step, TimedOut):
            raise ApikleyTaskTimeoutError(step.message)
        time.sleep(step.seconds)
