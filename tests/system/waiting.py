"""Waiting for a condition, always with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class StopWaiting(Exception):
    """Raised by a condition that can no longer come true (a process it waits for has exited)."""


def wait_for(condition: Callable[[], T], *, timeout: float, what: str, interval: float = 0.5) -> T:
    """
    Call ``condition`` until it returns something truthy, and return that.

    :param timeout: seconds to keep trying.
    :param what: the awaited thing, for the error message.
    :param interval: seconds between calls.
    :raises TimeoutError: when ``timeout`` passes first; it names ``what`` and the last error
        ``condition`` raised, if any.
    :raises StopWaiting: at once, when ``condition`` raises it.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
        except StopWaiting:
            raise
        except Exception as err:  # a component still starting may refuse connections
            last_error = err
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"gave up after {timeout:g} s waiting for {what}{detail}")
        time.sleep(interval)
