"""
When a failed call to Apikley is repeated, and how long to wait first.

Status queries are repeated on every transient error. ``createTask`` is repeated only where the
service surely did not take the request (429, which Apikley drops, or a connection that never
opened): anything else might have created a paid task already.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import tenacity

from airflow_provider_qwen.exceptions import ApikleyConnectionError, ApikleyError, ApikleyRateLimitError

#: The longest ``Retry-After`` we honour; a longer one is treated as this.
RETRY_AFTER_CAP_SECONDS = 300.0

#: What the retried function returns (for a coroutine function, the awaitable).
Result = TypeVar("Result")


class Log(Protocol):
    """Where waits and retries report: a :class:`logging.Logger`, or a task's or trigger's own log."""

    def info(self, msg: str, /, *args: Any) -> object:
        """Report progress."""

    def warning(self, msg: str, /, *args: Any) -> object:
        """Report a failure that is retried."""


def is_transient(error: BaseException) -> bool:
    """Whether repeating a read that raised ``error`` may succeed."""
    return isinstance(error, ApikleyError) and error.transient


def was_not_taken(error: BaseException) -> bool:
    """Whether the service surely did not act on the request that raised ``error``."""
    if isinstance(error, ApikleyRateLimitError):
        return True
    return isinstance(error, ApikleyConnectionError) and error.request_not_sent


@dataclass(frozen=True)
class RetryPolicy:
    """
    How many times to try a call and how long to wait in between.

    :param attempts: tries in all, the first included (1 means no retry).
    :param initial_wait: the scale of the waits: the n-th retry waits a random time up to
        ``initial_wait * 2**n`` (full jitter).
    :param max_wait: the longest wait between two tries, unless ``Retry-After`` asks for more.
    """

    attempts: int = 5
    initial_wait: float = 1.0
    max_wait: float = 30.0

    def wait_seconds(self, failures: int, error: BaseException | None) -> float:
        """
        How long to wait after ``failures`` failures in a row, the last one being ``error``.

        Exponential backoff with full jitter, so many waiting tasks do not retry in step; a
        ``Retry-After`` the service sent is honoured (up to five minutes).
        """
        backoff = random.uniform(0, min(self.max_wait, self.initial_wait * 2 ** (failures - 1)))
        retry_after = getattr(error, "retry_after", None)
        if retry_after is None:
            return backoff
        return min(max(retry_after, backoff), RETRY_AFTER_CAP_SECONDS)

    def _wait(self, retry_state: tenacity.RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        return self.wait_seconds(retry_state.attempt_number, error)

    def _kwargs(self, should_retry: Callable[[BaseException], bool], logger: Log) -> dict[str, Any]:
        def log_retry(retry_state: tenacity.RetryCallState) -> None:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
            logger.warning(
                "Apikley call failed (try %d of %d): %s; retrying in %.1fs",
                retry_state.attempt_number,
                self.attempts,
                error,
                wait,
            )

        return {
            "retry": tenacity.retry_if_exception(should_retry),
            "stop": tenacity.stop_after_attempt(self.attempts),
            "wait": self._wait,
            "before_sleep": log_retry,
            "reraise": True,
        }

    def call(
        self,
        should_retry: Callable[[BaseException], bool],
        logger: Log,
        fn: Callable[..., Result],
        *args: Any,
        **kwargs: Any,
    ) -> Result:
        """
        ``fn(*args, **kwargs)``, repeated under this policy; for a coroutine function, an awaitable.

        One try skips tenacity's controller, which would leave a reference cycle behind each call: a
        triggerer polling thousands of tasks would pay for those in garbage-collector pauses.
        """
        if self.attempts == 1:
            return fn(*args, **kwargs)
        # tenacity types its two controllers apart; either returns what ``fn`` does (for a coroutine
        # function, an awaitable of it)
        controller: Callable[..., object] = (self.async_retrying if inspect.iscoroutinefunction(fn) else self.retrying)(
            should_retry, logger
        )
        return cast(Result, controller(fn, *args, **kwargs))

    def retrying(self, should_retry: Callable[[BaseException], bool], logger: Log) -> tenacity.Retrying:
        """Return a tenacity controller for a blocking call."""
        return tenacity.Retrying(**self._kwargs(should_retry, logger))

    def async_retrying(self, should_retry: Callable[[BaseException], bool], logger: Log) -> tenacity.AsyncRetrying:
        """Return a tenacity controller for a coroutine."""
        return tenacity.AsyncRetrying(**self._kwargs(should_retry, logger))


#: One try, no retry: for waits that count failed queries across their polls themselves.
ONE_TRY = RetryPolicy(attempts=1)
