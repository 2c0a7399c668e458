"""How often to ask Apikley about a task, and the blocking wait used outside the triggerer."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

from airflow_provider_qwen.exceptions import ApikleyError, ApikleyTaskTimeoutError
from airflow_provider_qwen.hooks.retries import RetryPolicy, is_transient

if TYPE_CHECKING:
    from airflow_provider_qwen.hooks.apikley import ApikleyHook
    from airflow_provider_qwen.models import TaskRecord

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


class QueryErrorBudget:
    """
    How many status queries in a row may fail transiently before the wait gives up.

    A paid task keeps running on Apikley's side whatever happens to our queries, so a burst of
    5xx, 455 or dropped connections should slow the wait down, not fail it.

    :param limit: failures in a row that end the wait; the limit-th failure is raised.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.failures = 0

    def backoff_after(self, error: ApikleyError) -> float:
        """
        Count a failed query and return the seconds to wait before the next.

        :raises ApikleyError: ``error`` itself when it is not transient or the budget is spent.
        """
        self.failures += 1
        if not is_transient(error) or self.failures >= self.limit:
            raise error
        return QUERY_RETRY_POLICY.wait_seconds(self.failures, error)

    def reset(self) -> None:
        """A query succeeded: the next failure is the first in a row again."""
        self.failures = 0


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
    for until, shortest, longest in POLL_CADENCE:
        if elapsed < until:
            return random.uniform(shortest, longest)
    raise AssertionError("unreachable: the cadence ends at infinity")  # pragma: no cover


def timeout_message(apikley_task_id: str, last_state: str | None) -> str:
    """What a user reads when waiting for a task ran out of time."""
    return (
        f"Apikley task {apikley_task_id} did not finish before the deadline "
        f"(last state: {last_state or 'unknown'}). It may still finish on Apikley's side "
        f"under that id."
    )


def wait_until_done(
    hook: ApikleyHook,
    apikley_task_id: str,
    *,
    submitted_at: float,
    deadline: float,
    poll_interval: float | None = None,
    max_consecutive_errors: int = 10,
) -> TaskRecord:
    """
    Block until the task ends and return its record; for waits that hold a worker slot.

    :param hook: asks Apikley; give it a one-try retry policy, since the budget does the retrying.
    :param max_consecutive_errors: status queries in a row that may fail transiently.
    :raises ApikleyTaskTimeoutError: when the deadline (epoch seconds) passes first.
    :raises ApikleyError: a refusal, or the last of too many transient failures in a row.
    """
    errors = QueryErrorBudget(max_consecutive_errors)
    last_state = None
    while True:
        try:
            record = hook.get_task(apikley_task_id)
        except ApikleyError as err:
            delay = errors.backoff_after(err)
            hook.log.warning("Query for Apikley task %s failed (%s); retrying", apikley_task_id, err)
        else:
            errors.reset()
            if record.state.is_terminal:
                return record
            last_state = record.state.value
            delay = poll_delay(time.time() - submitted_at, poll_interval)
        now = time.time()
        if now >= deadline:
            raise ApikleyTaskTimeoutError(timeout_message(apikley_task_id, last_state))
        time.sleep(min(delay, deadline - now))
