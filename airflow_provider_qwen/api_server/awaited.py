"""
``POST /apikley/deliveries/await``: where a trigger learns that Apikley called back about its tasks.

The callback receiver keeps the record of each delivered task
(:func:`~airflow_provider_qwen.api_server.deliveries.keep_delivery`). A trigger waiting for tasks
asks here instead of polling Apikley: the answer comes as soon as one of them is delivered, or
after ``hold_seconds`` with nothing. Triggers run without a metadata database in Airflow 3, and
every triggerer reaches the api-server, as it must for the task pages and run budgets, so this is
the one place both the receiver and the waits reach.

The request is signed with the connection's API key
(:mod:`~airflow_provider_qwen.api_server.signed_requests`): only a holder of the key, who can read
those tasks from Apikley anyway, reads what was delivered through that connection, and only that.
It names at most :data:`MAX_AWAITED_TASKS` task ids, each shaped like one, and holds at most
:data:`MAX_HOLD_SECONDS`; fields that break a rule are answered 422 naming them. The same request
sent again (a replay, while its timestamp is fresh) is answered only what its signer could read anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from airflow_provider_qwen.api_server.deliveries import DELIVERY_BELL, DeliveriesUnavailable, read_deliveries
from airflow_provider_qwen.api_server.refusals import RefusalLog
from airflow_provider_qwen.api_server.signed_requests import BadField, answer_signed
from airflow_provider_qwen.validation import is_task_id

if TYPE_CHECKING:
    from airflow_provider_qwen.hooks.connection import ApikleySettings

log = logging.getLogger(__name__)

#: Where the endpoint is, under the provider's prefix.
AWAIT_PATH = "/deliveries/await"
#: Task ids one request may name.
MAX_AWAITED_TASKS = 500
#: The largest request body read: :data:`MAX_AWAITED_TASKS` ids fit.
MAX_AWAIT_BYTES = 96 * 1024
#: The longest a request is held with nothing delivered.
MAX_HOLD_SECONDS = 30.0
#: Seconds between reads of the table while holding: how soon a delivery kept by another
#: api-server process is seen (one kept by this process wakes the wait at once).
RECHECK_SECONDS = 1.0
#: Records one answer carries at most, in bytes; the rest are in the next answer, asked at once.
MAX_ANSWER_RECORD_BYTES = 1024 * 1024


def awaited_router() -> APIRouter:
    """Return the endpoint's route."""
    refusals = RefusalLog(log)
    router = APIRouter()

    @router.post(AWAIT_PATH)
    async def await_deliveries(request: Request) -> Response:
        async def act(settings: ApikleySettings, payload: dict[str, Any]) -> dict[str, Any]:
            task_ids, hold = awaited_tasks(payload.get("apikley_task_ids")), hold_seconds(payload.get("hold_seconds"))
            return {"delivered": await held_until_delivered(settings.conn_id, task_ids, hold, request.is_disconnected)}

        return await answer_signed(
            request,
            AWAIT_PATH,
            MAX_AWAIT_BYTES,
            act,
            what="deliveries",
            refusals=refusals,
            log=log,
            outages=(DeliveriesUnavailable,),
            outage_detail="deliveries cannot be read right now",
        )

    return router


async def held_until_delivered(
    conn_id: str, task_ids: list[str], hold: float, gone: Callable[[], Awaitable[bool]]
) -> dict[str, str]:
    """
    Return the kept records (JSON text) of those of ``task_ids`` delivered, once there is one or ``hold`` has passed.

    :param gone: whether the caller hung up (a trigger that asks again for more tasks does): then
        the request is let go at the next look, with nothing.
    :raises DeliveriesUnavailable: when the table cannot be read.
    """
    loop = asyncio.get_running_loop()
    until = loop.time() + hold
    while True:
        # listening before reading: a delivery kept between the read and the wait still wakes it
        with DELIVERY_BELL.listening(conn_id, task_ids) as rung:
            if await gone():  # asked again, for more tasks: not worth a read
                return {}
            found = await run_in_threadpool(read_deliveries, conn_id, task_ids)
            left = until - loop.time()
            if found or left <= 0:
                return within_answer_bound(found)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rung.wait(), timeout=min(RECHECK_SECONDS, left))


def within_answer_bound(records: dict[str, str]) -> dict[str, str]:
    """Return as many of ``records`` as fit in :data:`MAX_ANSWER_RECORD_BYTES` (at least one)."""
    kept: dict[str, str] = {}
    size = 0
    for task_id, record in records.items():
        size += len(record)
        if kept and size > MAX_ANSWER_RECORD_BYTES:
            break
        kept[task_id] = record
    return kept


def awaited_tasks(value: object) -> list[str]:
    """
    Return the task ids of a request.

    :raises BadField: unless ``value`` is a list of 1 to :data:`MAX_AWAITED_TASKS` Apikley task ids.
    """
    rule = f"must be a list of 1 to {MAX_AWAITED_TASKS} Apikley task ids"
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_AWAITED_TASKS:
        raise BadField(f"apikley_task_ids={_shown(value)}: {rule}")
    for index, task_id in enumerate(value):
        if not is_task_id(task_id):
            raise BadField(f"apikley_task_ids[{index}]={_shown(task_id)}: {rule}")
    return list(dict.fromkeys(value))


def hold_seconds(value: object) -> float:
    """
    Return how long a request may be held.

    :raises BadField: unless ``value`` is a number of seconds from 0 to :data:`MAX_HOLD_SECONDS`.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_HOLD_SECONDS
    ):
        raise BadField(f"hold_seconds={_shown(value)}: must be a number of seconds from 0 to {MAX_HOLD_SECONDS:g}")
    return float(value)


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 100 else shown[:97] + "..."
