"""
Every use of Airflow's private internals, each with why no public API serves and a safe fallback.

Each function below is used on Airflow 3.1, 3.2 and 3.3 (``make test`` and ``make test-compat``),
and ``tests/loopback/test_compat.py`` proves, on each line, that the internal is there with the
signature expected (so the fast path is taken) and that its fallback is taken when the internal is
removed or renamed. A fallback never crashes a run: it takes the path that needs no internal, which
is to resume the task on a worker (or, on the api-server, to refuse what cannot be checked). Which
way each feature goes is logged once per process, at INFO, or at WARNING for a fallback.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from airflow.providers.common.compat.sdk import BaseOperator

log = logging.getLogger(__name__)


class TaskStateStore(Protocol):
    """
    What the provider uses of ``context["task_state_store"]``: Airflow 3.3's, kept across a task's tries.

    Airflow 3.1 and 3.2 have none (the context has no such key), and a retry there submits anew.
    """

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value saved under ``key`` by this or an earlier try, or ``default``."""

    def set(self, key: str, value: Any) -> None:
        """Save ``value`` (JSON) under ``key`` for later tries."""


# ---- ending a task from the triggerer --------------------------------------------------------------


#: The names Airflow has given ``XCom.set``'s private mapped-length argument, newest first.
MAPPED_LENGTH_ARGUMENTS = ("_mapped_length", "mapped_length")


def trigger_xcom_set() -> Callable[..., Any] | None:
    """
    ``XCom.set`` of the Task SDK as a trigger may call it, taking ``mapped_length``; ``None`` when it cannot.

    Why private: a trigger that ends its task must push the value the way a worker does, with the
    mapped length that lets downstream tasks ``.expand`` over it. ``TaskSuccessEvent(xcoms=...)`` (the
    public way) stores a JSON string and records no length, and only a private argument records one
    (``_mapped_length`` on 3.1-3.3, ``mapped_length`` before). Fallback: ``None``, and the trigger
    resumes the task on a worker.
    """
    try:
        from airflow.sdk.execution_time.xcom import XCom
    except ImportError:
        XCom = None
    argument = next((name for name in MAPPED_LENGTH_ARGUMENTS if XCom and _takes(XCom.set, name)), None)
    if XCom is None or argument is None:
        _decided(
            "end_in_triggerer",
            "tasks resume on a worker: this Airflow's XCom.set records no mapped length",
            fallback=True,
        )
        return None
    _decided(
        "end_in_triggerer",
        f"tasks with nothing left for a worker end in the triggerer (XCom.set {argument})",
        fallback=False,
    )
    xcom_set = XCom.set

    def push(*, mapped_length: int | None = None, **where: Any) -> Any:
        if mapped_length is not None:
            where[argument] = mapped_length
        return xcom_set(**where)

    return push


def maps_over_result(operator: BaseOperator) -> bool | None:
    """
    Whether a task downstream of ``operator`` maps over its value; ``None`` when that cannot be told.

    Why private: ``iter_mapped_dependants`` is how Airflow's own task runner decides to record a
    mapped length, and no public API exposes the DAG's mapping structure. Fallback: ``None``, and the
    task resumes on a worker, which records the length itself.
    """
    dependants = getattr(operator, "iter_mapped_dependants", None)
    if dependants is None:
        return None
    try:
        return next(dependants(), None) is not None
    except Exception:  # a changed internal: the worker knows
        log.debug("iter_mapped_dependants failed", exc_info=True)
        return None


def post_execute_hook(operator: BaseOperator) -> Any:
    """
    Return the task's ``post_execute`` callable, or an overridden ``post_execute`` method; ``None`` when neither.

    Why private: ``BaseOperator`` keeps the ``post_execute`` argument in ``_post_execute_hook`` and has
    no public getter. Fallback: when the attribute is missing, assume a hook may exist (``True``), so
    the task ends on a worker, where Airflow runs it.
    """
    from airflow.providers.common.compat.sdk import BaseOperator

    if type(operator).post_execute is not BaseOperator.post_execute:
        return type(operator).post_execute
    return getattr(operator, "_post_execute_hook", True)


# ---- the extra link --------------------------------------------------------------------------------


def xcom_may_exist(ti_key: Any, key: str) -> bool:
    """
    Whether any instance of ``ti_key``'s task pushed XCom ``key``: ``False`` only when none did.

    Why private: asking the task SDK's supervisor for a missing XCom logs "XCom not found" as an
    error in the task's log; its ``GetXComCount`` request answers with a count and logs nothing.
    Neither is public. Fallback: ``True``, and the caller looks the XCom up as Airflow would.
    """
    task_runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    if comms is None:
        return True
    try:
        from airflow.sdk.execution_time.comms import GetXComCount, XComCountResponse

        answer = comms.send(GetXComCount(key=key, dag_id=ti_key.dag_id, run_id=ti_key.run_id, task_id=ti_key.task_id))
    except Exception:  # missing or changed: look it up instead
        log.debug("GetXComCount failed", exc_info=True)
        return True
    return not isinstance(answer, XComCountResponse) or answer.len > 0


# ---- the api-server --------------------------------------------------------------------------------


def register_asset_change(
    *,
    asset: Any,
    extra: dict[str, Any],
    session: Session,
    partition_key: str,
    teams: set[str] | None = None,
    callback_sink: list[Callable[[], None]] | None = None,
) -> None:
    """
    Record an event of ``asset`` with ``extra``, as an API-sourced event of ``teams``, partitioned by ``partition_key``.

    Why private: the api-server plugin records an event in its own transaction, together with the
    claim that makes a delivery count once; the public REST endpoint would commit separately. Each
    argument is passed where this Airflow's asset manager names it, and dropped where it does not:
    ``partition_key`` (from 3.2; before, the event is unpartitioned), ``source_is_api`` with
    ``api_user_teams`` (from 3.3; under ``[core] multi_team`` the event carries ``teams``, else no
    team filtering applies) and ``callback_sink`` (from 3.3; else listeners are told at once, inside
    the transaction).
    """
    from airflow.assets.manager import asset_manager

    register = asset_manager.register_asset_change
    arguments: dict[str, Any] = {"asset": asset, "extra": extra, "session": session}
    if _takes(register, "partition_key"):
        arguments["partition_key"] = partition_key
    if _takes(register, "source_is_api") and _takes(register, "api_user_teams"):
        arguments.update(source_is_api=True, api_user_teams=set(teams or ()))
    if callback_sink is not None and _takes(register, "callback_sink"):
        arguments["callback_sink"] = callback_sink
    dropped = sorted({"partition_key", "source_is_api", "callback_sink"} - set(arguments))
    _decided(
        "asset_events",
        "callback events are recorded " + (f"without {', '.join(dropped)}" if dropped else "with every argument"),
        fallback=False,  # each is an argument this Airflow does not have, not a loss on it
    )
    register(**arguments)


def requires_access_connection(method: Literal["GET", "POST", "PUT", "DELETE"]) -> Callable[..., Any]:
    """
    Return the api-server's dependency that lets through only users who may ``method`` connections.

    Why private: it is how the api-server's own connection routes check permissions, through the
    configured auth manager; a plugin has no public equivalent. Fallback: a dependency that refuses
    every request (503), because a page that reads a connection's key must not be served unchecked.
    """
    try:
        from airflow.api_fastapi.core_api.security import requires_access_connection as check
    except ImportError:
        _decided("task_page", "the task page refuses everyone: no requires_access_connection here", fallback=True)
        return _refuse_unchecked
    return check(method=method)


def _refuse_unchecked() -> None:
    from fastapi import HTTPException

    raise HTTPException(503, "This Airflow cannot check who may read connections; the page is disabled")


def _takes(function: Callable[..., Any], argument: str) -> bool:
    """
    Whether ``function`` names the keyword ``argument``.

    A ``**kwargs`` does not count: Airflow's own catch-alls drop what they do not know, silently.
    """
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    parameter = parameters.get(argument)
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)


@functools.cache
def _decided(feature: str, how: str, *, fallback: bool) -> None:
    """Log, once per process, which way ``feature`` goes on this Airflow: a fallback as a warning."""
    log.log(logging.WARNING if fallback else logging.INFO, "%s: %s", feature, how)
