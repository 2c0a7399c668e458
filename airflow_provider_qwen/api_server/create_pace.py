"""
``POST /apikley/create-pace/reserve``: a create slot from the pace a connection's edits share.

Apikley limits how many tasks an account creates in a sliding window, and mapped edits submit
from many workers at once. Right before its create, each edit asks here for the connection's next
slot (its tables in :mod:`~airflow_provider_qwen.api_server.create_pace_ledger`) and waits for it,
so together they stay under the limit instead of each meeting it alone with a 429. The spacing
comes from the connection as the api-server reads it (its extras ``creates_per_window`` and
``window_seconds``), never from the request. Anyone can reach this endpoint, so it trusts nothing
it is sent:

- The body is read up to :data:`MAX_PACE_BYTES` and must be a JSON object with no ``NaN`` or
  ``Infinity``; it is checked as every signed request is (see
  :mod:`~airflow_provider_qwen.api_server.signed_requests`): its ``conn_id`` and its signature under
  that connection's API key come first. Every refusal is the same bare 401, logged at most once a
  minute per kind.
- Only then are the fields checked (422 naming the field): ``conn_id`` and ``request_id`` (32
  lowercase hex digits, new for each create) and nothing else.

A request sent again with the same ``request_id`` (its answer lost, or replayed) is answered with
the slot it got the first time and moves the pace no further. The answer is ``{"wait_seconds",
"spacing_seconds"}``: how long to wait from now for the slot, and the connection's spacing. A fault
of the database answers 503, and the task then creates without the pace.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from airflow_provider_qwen.api_server.create_pace_ledger import PaceUnavailable, reserve_slot, slot_spacing
from airflow_provider_qwen.api_server.refusals import RefusalLog
from airflow_provider_qwen.api_server.signed_requests import BadField, answer_signed
from airflow_provider_qwen.api_server.urls import CREATE_PACE_RESERVE_PATH

if TYPE_CHECKING:
    from airflow_provider_qwen.hooks.connection import ApikleySettings

log = logging.getLogger(__name__)

#: The largest request body read: a connection id and a request id fit many times over.
MAX_PACE_BYTES = 1024
#: Where the endpoint is, under the provider's prefix.
RESERVE_SLOT_PATH = CREATE_PACE_RESERVE_PATH
#: What a request names its slot by: a random id of 128 bits, new for each create.
REQUEST_ID = re.compile(r"[0-9a-f]{32}")
#: The fields a request holds.
FIELDS = frozenset({"conn_id", "request_id"})


def create_pace_router() -> APIRouter:
    """Return the pace's route."""
    refusals = RefusalLog(log)
    router = APIRouter()

    @router.post(RESERVE_SLOT_PATH)
    async def reserve_create_slot(request: Request) -> Response:
        return await answer_signed(
            request,
            RESERVE_SLOT_PATH,
            MAX_PACE_BYTES,
            reserve,
            what="create pace",
            refusals=refusals,
            log=log,
            outages=(PaceUnavailable,),
            outage_detail="the create pace cannot be used right now",
            allow_nan=False,
        )

    return router


async def reserve(settings: ApikleySettings, payload: dict[str, Any]) -> dict[str, float]:
    """Hand the request its connection's next slot; answer how long to wait for it, and the spacing."""
    request_id = checked_request_id(payload)
    spacing = slot_spacing(settings.creates_per_window, settings.window_seconds)
    slot = await run_in_threadpool(reserve_slot, settings.conn_id, request_id, spacing)
    return {"wait_seconds": max(0.0, slot.at - time.time()), "spacing_seconds": slot.spacing}


def checked_request_id(payload: dict[str, Any]) -> str:
    """
    Return the request's ``request_id``, once the body holds nothing but the fields it takes.

    :raises BadField: naming the field, its value and the rule.
    """
    if unknown := sorted(set(payload) - FIELDS):
        raise BadField(f"unknown fields {_shown(unknown)}: the body takes {', '.join(sorted(FIELDS))} only")
    request_id = payload.get("request_id")
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise BadField(f"request_id={_shown(request_id)}: must be 32 lowercase hex digits")
    return request_id


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 100 else shown[:97] + "..."
