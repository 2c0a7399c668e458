"""
The rule every spend budget follows: an edit is submitted only when its expected cost still fits.

A budget has a limit in credits. What counts against it is what its edits were charged (``spent``:
the ``creditsConsumed`` Apikley reported, failed edits included) and what its edits not yet ended
are expected to cost (``in flight``). An edit is expected to cost what Apikley last charged for an
edit of the same model, or :data:`DEFAULT_EDIT_CREDITS` before any is known. A task's own
``max_credits`` is applied here, in the task; a run's ``run_max_credits`` by the ledger on the
api-server (:mod:`airflow_provider_qwen.api_server.budgets`), with the same rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from airflow_provider_qwen.exceptions import ApikleyBudgetExceededError, ApikleyInputError

#: What an edit is expected to cost before Apikley has charged for one of its model: the API
#: contract publishes no prices, and the emulator charges 1 credit a task.
DEFAULT_EDIT_CREDITS = 1.0
#: The largest budget taken, in credits: a bound that keeps every sum a finite float.
MAX_BUDGET_CREDITS = 1e12
#: The name of a run's budget when the tasks name none.
DEFAULT_RUN_BUDGET = "default"


def check_credits(name: str, value: object) -> float | None:
    """
    Return ``value`` as a number of credits: ``None``, or a finite number from 0 to :data:`MAX_BUDGET_CREDITS`.

    :raises ApikleyInputError: naming the argument, the value and the rule.
    """
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_BUDGET_CREDITS
    ):
        raise ApikleyInputError(f"{name}={value!r}: must be a number of credits, from 0 to {MAX_BUDGET_CREDITS:g}")
    return float(value)


@dataclass(frozen=True)
class BudgetState:
    """
    Where a budget stands.

    :param limit: its limit in credits.
    :param spent: credits its ended edits were charged.
    :param in_flight: credits reserved for its edits not yet ended.
    :param which: what the budget is, for messages: the task's ``max_credits``, or a run's budget.
    """

    limit: float
    spent: float = 0.0
    in_flight: float = 0.0
    which: str = "the budget"

    def affordable(self, expected: float, wanted: int) -> int:
        """
        Return how many of ``wanted`` edits, each expected to cost ``expected``, fit in what is left.

        The edits fit when spent, in flight and their expected cost together stay within the limit;
        an edit expected to cost nothing always fits.
        """
        if wanted <= 0:
            return 0
        if expected <= 0:
            return wanted
        room = self.limit - self.spent - self.in_flight
        # a tolerance of a millionth of a credit, so that 0.1 + 0.2 fits in 0.3
        return max(0, min(wanted, math.floor((room + 1e-6) / expected)))

    def refusal(self, expected: float, unsubmitted: str = "nothing was submitted") -> ApikleyBudgetExceededError:
        """Return the error of an edit expected to cost ``expected`` that does not fit."""
        return ApikleyBudgetExceededError(
            f"Over budget: {self.which} is {self.limit:g} credits, {self.spent:g} spent and {self.in_flight:g} in "
            f"flight, so an edit expected to cost {expected:g} would go past it; {unsubmitted}, and nothing "
            "was paid for it"
        )
