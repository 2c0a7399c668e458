"""
``POST /apikley/budgets/reserve`` and ``/apikley/budgets/settle``: the run budgets' ledger.

Tasks on workers have no database, and every worker reaches the api-server, so the ledger of each
run's budget lives here (its tables in :mod:`~airflow_provider_qwen.api_server.budget_ledger`).
Before a paid create, a task reserves its edit's expected cost; once the edit ended, it settles
what Apikley charged. Anyone can reach these endpoints, so they trust nothing they are sent:

- The body is read up to :data:`MAX_BUDGET_BYTES`, and checked as every signed request is (see
  :mod:`~airflow_provider_qwen.api_server.signed_requests`): its ``conn_id`` and its signature under
  that connection's API key come first. The connection chooses nothing else: its budgets are its
  own (the budget's key includes it). Every refusal is the same bare 401, logged at most once a
  minute per kind.
- Only then are the fields checked (422 naming the field, the value and the rule): ids of at most
  250 characters, credits finite and from 0 to :data:`~airflow_provider_qwen.budget.MAX_BUDGET_CREDITS`,
  at most :data:`MAX_SETTLED_TASKS` tasks a settlement.

A reservation sent again (the same ``owner`` and ``part``) gets the first answer and reserves
nothing more; a task settled again is counted once. A fault of the database answers 503.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from airflow_provider_qwen.api_server.budget_ledger import (
    BudgetKey,
    LedgerUnavailable,
    SettledTask,
    Standing,
    UnknownBudget,
    reserve,
    settle,
)
from airflow_provider_qwen.api_server.refusals import RefusalLog
from airflow_provider_qwen.api_server.signed_requests import BadField, answer_signed
from airflow_provider_qwen.budget import MAX_BUDGET_CREDITS, check_credits
from airflow_provider_qwen.exceptions import ApikleyInputError
from airflow_provider_qwen.validation import check_model, is_task_id

if TYPE_CHECKING:
    from airflow_provider_qwen.hooks.connection import ApikleySettings

log = logging.getLogger(__name__)

#: The largest request body read: a settlement of :data:`MAX_SETTLED_TASKS` tasks fits.
MAX_BUDGET_BYTES = 128 * 1024
#: Tasks one settlement may report; a larger batch settles in several.
MAX_SETTLED_TASKS = 1000
#: Edits one reservation may ask for.
MAX_RESERVED_EDITS = 1_000_000
#: The longest DAG id, run id, budget name, owner or part taken.
MAX_ID_CHARS = 250
#: Where the endpoints are, under the provider's prefix.
RESERVE_PATH, SETTLE_PATH = "/budgets/reserve", "/budgets/settle"


def budgets_router() -> APIRouter:
    """Return the ledger's routes."""
    refusals = RefusalLog(log)
    router = APIRouter()

    async def handle(request: Request, path: str) -> Response:
        async def act(settings: ApikleySettings, payload: dict[str, Any]) -> dict[str, Any] | Response:
            try:
                standing = await run_in_threadpool(apply, path, payload)
            except UnknownBudget:
                return JSONResponse({"detail": "nothing was ever reserved in this budget"}, status_code=404)
            return {
                "granted": standing.granted,
                "expected": standing.expected,
                "spent": standing.spent,
                "in_flight": standing.in_flight,
            }

        return await answer_signed(
            request,
            path,
            MAX_BUDGET_BYTES,
            act,
            what="budget",
            refusals=refusals,
            log=log,
            outages=(LedgerUnavailable,),
            outage_detail="the budget ledger cannot be used right now",
        )

    @router.post(RESERVE_PATH)
    async def reserve_edits(request: Request) -> Response:
        return await handle(request, RESERVE_PATH)

    @router.post(SETTLE_PATH)
    async def settle_edits(request: Request) -> Response:
        return await handle(request, SETTLE_PATH)

    return router


def apply(path: str, payload: dict[str, Any]) -> Standing:
    """
    Check a signed request's fields and reserve or settle.

    :raises BadField: naming the field, its value and the rule.
    """
    key = BudgetKey(
        conn_id=payload["conn_id"],
        dag_id=_text(payload, "dag_id"),
        run_id=_text(payload, "run_id"),
        name=_text(payload, "budget", 100),
    )
    owner, model = _text(payload, "owner"), _model(payload)
    if path == RESERVE_PATH:
        count = payload.get("count")
        if type(count) is not int or not 1 <= count <= MAX_RESERVED_EDITS:
            raise BadField(f"count={_shown(count)}: must be a whole number from 1 to {MAX_RESERVED_EDITS}")
        return reserve(key, _credits(payload, "limit"), owner, _text(payload, "part"), model, count)
    part = None if payload.get("part") is None else _text(payload, "part")
    return settle(key, owner, part, model, _tasks(payload.get("tasks")))


def _text(payload: dict[str, Any], name: str, limit: int = MAX_ID_CHARS) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not 1 <= len(value) <= limit or not value.isprintable():
        raise BadField(f"{name}={_shown(value)}: must be text of 1 to {limit} printable characters")
    return value


def _model(payload: dict[str, Any]) -> str:
    try:
        return check_model(payload.get("model"))
    except (ApikleyInputError, TypeError) as err:
        raise BadField(str(err)) from None


def _credits(payload: dict[str, Any], name: str) -> float:
    value = _credits_or_none(name, payload.get(name))
    if value is None:
        raise BadField(f"{name}=None: must be a number of credits, from 0 to {MAX_BUDGET_CREDITS:g}")
    return value


def _credits_or_none(name: str, value: object) -> float | None:
    try:
        return check_credits(name, value)
    except ApikleyInputError as err:
        raise BadField(str(err)) from None


def _tasks(value: object) -> list[SettledTask]:
    rule = f"a list of at most {MAX_SETTLED_TASKS} [apikley_task_id, credits or null, succeeded] items"
    if not isinstance(value, list) or len(value) > MAX_SETTLED_TASKS:
        raise BadField(f"tasks={_shown(value)}: must be {rule}")
    tasks = []
    for index, item in enumerate(value):
        if not isinstance(item, list) or len(item) != 3:
            raise BadField(f"tasks[{index}]={_shown(item)}: must be [apikley_task_id, credits or null, succeeded]")
        task_id, credits, succeeded = item
        if not is_task_id(task_id):
            raise BadField(f"tasks[{index}][0]={_shown(task_id)}: must be an Apikley task id")
        credits = _credits_or_none(f"tasks[{index}][1]", credits)
        if not isinstance(succeeded, bool):
            raise BadField(f"tasks[{index}][2]={_shown(succeeded)}: must be true or false")
        tasks.append(SettledTask(task_id, credits, succeeded))
    return tasks


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 100 else shown[:97] + "..."
