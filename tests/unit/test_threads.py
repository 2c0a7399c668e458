"""Blocking work from a trigger: off the event loop, yet able to send requests from it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from asgiref.sync import async_to_sync

from airflow_provider_qwen.threads import in_thread


async def test_the_loop_goes_on_while_the_work_blocks_and_its_result_comes_back():
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    try:
        assert await in_thread(lambda seconds: time.sleep(seconds) or "slept", 0.3) == "slept"
    finally:
        ticker.cancel()
    assert ticks >= 10, "the event loop was blocked while the work ran"


async def test_an_async_call_made_by_the_work_runs_on_the_awaiting_loop_not_in_the_thread():
    # Airflow's triggerer sends its supervisor requests this way (async_to_sync from a sync call):
    # they must run on the loop that sends the triggerer's own, so that answers stay in order.
    loop_thread = threading.get_ident()
    seen = {}

    async def request() -> None:
        seen["request"] = threading.get_ident()

    def blocking_work() -> None:
        seen["work"] = threading.get_ident()
        async_to_sync(request)()

    await in_thread(blocking_work)
    assert seen["work"] != loop_thread
    assert seen["request"] == loop_thread


async def test_the_works_exception_reaches_the_awaiting_trigger():
    def fails() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await in_thread(fails)
