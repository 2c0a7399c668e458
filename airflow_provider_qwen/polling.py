"""How often to ask Apikley about a task, and the blocking wait used outside the triggerer."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

from airflow_provider_qwen.exceptions import ApikleyTaskTimeoutError

if TYPE_CHECKING:
    from airflow_provider_qwen.hooks.apikley import ApikleyHook
    from airflow_provider_qwen.models import TaskRecord

#: (seconds since submit, shortest, longest wait): Apikley's advice for polling a task.
POLL_CADENCE: tuple[tuple[float, float, float], ...] = (
    (30.0, 2.0, 3.0),
    (120.0, 5.0, 10.0),
    (float("inf"), 15.0, 30.0),
)


def poll_delay(elapsed: float, poll_interval: float | None = None) -> float:
    """
    Seconds to wait before the next status query.

    :param elapsed: seconds since the task was submitted.
    :param poll_interval: a fixed interval that overrides Apikley's advised cadence (2-3 s for the
        first 30 s, 5-10 s until 2 minutes, 15-30 s after that, with jitter).
    """
    if poll_interval is not None:
        return float(poll_interval)
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
) -> TaskRecord:
    """
    Block until the task ends and return its record; for waits that hold a worker slot.

    :raises ApikleyTaskTimeoutError: when the deadline (epoch seconds) passes first.
    """
    while True:
        record = hook.get_task(apikley_task_id)
        if record.state.is_terminal:
            return record
        now = time.time()
        if now >= deadline:
            raise ApikleyTaskTimeoutError(timeout_message(apikley_task_id, record.state.value))
        time.sleep(min(poll_delay(now - submitted_at, poll_interval), deadline - now))
