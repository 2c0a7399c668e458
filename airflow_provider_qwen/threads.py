"""Blocking work from a trigger's event loop, in a thread that can still reach the triggerer's supervisor."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


async def in_thread(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """
    Run ``func`` in a thread and await its result, without blocking the event loop.

    Use it, not :func:`asyncio.to_thread`, for anything that may talk to Airflow (reading a
    connection, masking a secret, pushing an XCom). In a triggerer those calls are requests to its
    supervisor over one socket, and asgiref's threads send them from the event loop that also sends
    the triggerer's own requests. Sent from a plain thread instead, a request races the loop's:
    Airflow 3.1 and 3.2.1 read the answers in the order they arrive and their trigger runner dies on
    the first one out of order ("Response read out of order"), taking every trigger with it.
    """
    from asgiref.sync import sync_to_async  # here: every DAG file that imports an operator would pay for it

    return await sync_to_async(func, thread_sensitive=False)(*args, **kwargs)
