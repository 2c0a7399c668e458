"""
A run's shared budget, as a task reaches it: the ledger on this Airflow's api-server.

Workers have no database in Airflow 3, and every worker reaches the api-server, so a run's budget
lives in the provider's app there (:mod:`airflow_provider_qwen.api_server.budgets`), at ``[api]
base_url``. Each request is signed with the connection's API key. A reservation is sent again
after a fault, never doubled (the ledger answers a repeated one as it did the first). The budget
fails closed: when the ledger cannot be reached or refuses, no edit is submitted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_qwen.app_requests import AppBusy, AppRefused, app_url, post_signed
from airflow_provider_qwen.budget import DEFAULT_EDIT_CREDITS, BudgetState

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_qwen.hooks.apikley import ApikleyHook
    from airflow_provider_qwen.hooks.retries import Log

#: Seconds one request to the ledger may take.
LEDGER_TIMEOUT_SECONDS = 10.0
#: Tasks one settlement request reports (the ledger takes 1,000 at most).
SETTLED_PER_REQUEST = 1000
#: An edit that ended, as a settlement reports it: its Apikley task id, what Apikley said it cost
#: (``None`` when it did not say) and whether it succeeded.
Ended = tuple[str, float | None, bool]
#: Requests sent for one reservation or settlement, when the ledger cannot be reached or answers 503.
LEDGER_ATTEMPTS = 3
#: The most of a ledger's answer read: a budget's is well under a kilobyte.
MAX_LEDGER_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Reservation:
    """
    What the ledger reserved for an owner's edits.

    :param part: which of the owner's reservations.
    :param granted: how many edits were reserved.
    :param expected: what each is expected to cost.
    :param state: the budget before this reservation, for messages.
    """

    part: str
    granted: int
    expected: float
    state: BudgetState


class RunBudget:
    """
    The budget a task instance shares with the other tasks of its run that name it.

    :param hook: the task's hook: its connection names the budget and signs every request.
    :param context: the task's context: its DAG, run, task and map index.
    :param limit: ``run_max_credits``.
    :param name: ``run_budget_name``.
    :param model: the model of the task's edits, whose last cost is the expected cost.
    """

    def __init__(self, hook: ApikleyHook, context: Context, limit: float, name: str, model: str) -> None:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        self.hook = hook
        self.limit = limit
        self.model = model
        self.fields: dict[str, Any] = {
            "conn_id": hook.apikley_conn_id,
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "budget": name,
        }
        self.owner = ti.task_id + (f"[{map_index}]" if map_index is not None and map_index >= 0 else "")
        self.try_number = getattr(ti, "try_number", 1) or 1
        self.which = f"the run's budget {name!r} (run_max_credits of run {ti.run_id} of DAG {ti.dag_id})"

    def reserve(self, count: int, part: str = "0") -> Reservation:
        """
        Reserve as many of ``count`` edits as fit in the budget; the ledger decides for every task of the run at once.

        :param part: which of this try's reservations (a batch reserves a burst at a time).
        :raises ApikleyBudgetUnavailableError: when the ledger cannot be reached or refuses.
        """
        part = f"{self.try_number}.{part}"
        asked = {"limit": self.limit, "owner": self.owner, "part": part, "model": self.model, "count": count}
        answer = self._post("/budgets/reserve", {**self.fields, **asked})
        state = BudgetState(self.limit, answer["spent"], answer["in_flight"], self.which)
        return Reservation(part, int(answer["granted"]), float(answer["expected"]), state)

    def settle(self, ended: list[Ended], log: Log, part: str | None = None) -> None:
        """
        Count what the ``ended`` edits cost, and close this task instance's reservations (or only ``part``).

        Closing every reservation of the task instance covers those of earlier tries whose edits
        this try resumed. A ledger that cannot be reached is logged, and the reservations stay
        counted at their expected cost: the edits are paid for already, and failing would not change that.
        """
        body = {**self.fields, "owner": self.owner, "model": self.model}
        try:
            # a settlement takes MAX_SETTLED_TASKS tasks at most; the last one closes the reservations
            chunks = [ended[start : start + SETTLED_PER_REQUEST] for start in range(0, len(ended), SETTLED_PER_REQUEST)]
            for chunk in chunks[:-1]:
                self._post("/budgets/settle", {**body, "part": "-", "tasks": [list(item) for item in chunk]})
            last = chunks[-1] if chunks else []
            answer = self._post("/budgets/settle", {**body, "part": part, "tasks": [list(item) for item in last]})
        except Exception as err:
            log.warning(
                "Could not settle what %d edits cost with %s; their reservations stay counted at their expected "
                "cost: %s",
                len(ended),
                self.which,
                err,
            )
            return
        log.info(
            "%s: %g credits spent, %g in flight, of %g", self.which, answer["spent"], answer["in_flight"], self.limit
        )

    def _post(self, path: str, fields: dict[str, Any]) -> dict[str, Any]:
        """
        Send ``fields`` to the ledger's ``path``, signed; return its answer, a JSON object.

        Sent again (:data:`LEDGER_ATTEMPTS` in all) while the ledger cannot be reached or answers
        503; the ledger answers a repeated request as it did the first.

        :raises ApikleyBudgetUnavailableError: when the ledger cannot be used, naming why.
        """
        from airflow_provider_qwen.exceptions import ApikleyBudgetUnavailableError

        url = app_url(path)
        if url is None:
            raise ApikleyBudgetUnavailableError(
                f"{self.which} is kept on the api-server, and [api] base_url is not set: nothing was submitted"
            )
        body = json.dumps(fields, separators=(",", ":"), allow_nan=False).encode()
        try:
            return post_signed(
                url,
                path,
                body,
                self.hook.settings.api_key,
                attempts=LEDGER_ATTEMPTS,
                first_wait=1.0,
                timeout=LEDGER_TIMEOUT_SECONDS,
                max_answer_bytes=MAX_LEDGER_ANSWER_BYTES,
            )
        except (AppBusy, AppRefused) as err:
            raise ApikleyBudgetUnavailableError(
                f"{self.which}: the budget ledger at {url} cannot be used, so nothing was submitted: {err}"
            ) from None


@dataclass(frozen=True)
class Granted:
    """
    How many edits a try may submit now, under its task's and its run's budgets.

    :param count: how many of the edits asked for fit in both.
    :param expected: what each is expected to cost.
    :param limiting: the budget that let fewer through than were asked for, if one did.
    """

    count: int
    expected: float
    limiting: BudgetState | None


def reserve_edits(
    budget: RunBudget | None, max_credits: float | None, committed: float, count: int, part: str, log: Log
) -> Granted:
    """
    Decide how many of ``count`` edits fit in the run's budget (reserving them there) and in ``max_credits``.

    The run's ledger answers with what an edit of the model last cost, which the task's own budget
    uses too; without a run budget an edit is expected to cost
    :data:`~airflow_provider_qwen.budget.DEFAULT_EDIT_CREDITS`. A reservation the task's budget then
    leaves wholly unused is released at once.

    :param committed: what this try has committed to edits already, against ``max_credits``.
    :raises ApikleyBudgetUnavailableError: when the run's ledger cannot be reached or refuses.
    """
    expected, granted, limiting = DEFAULT_EDIT_CREDITS, count, None
    reservation = None
    if budget is not None:
        reservation = budget.reserve(count, part)
        expected, granted = reservation.expected, reservation.granted
        if granted < count:
            limiting = reservation.state
    if max_credits is not None:
        task = BudgetState(max_credits, committed, 0.0, "this task's max_credits")
        fits = task.affordable(expected, granted)
        if fits < granted:
            granted, limiting = fits, task
    if budget is not None and reservation is not None and reservation.granted and not granted:
        budget.settle([], log, part=reservation.part)
    return Granted(granted, expected, limiting)
