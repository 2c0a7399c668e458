"""The reservation rule: an edit goes only while spent, in flight and its expected cost stay within the limit."""

from __future__ import annotations

import pytest

from airflow_provider_qwen.budget import BudgetState, check_credits
from airflow_provider_qwen.exceptions import ApikleyBudgetExceededError, ApikleyError, ApikleyInputError


@pytest.mark.parametrize(
    ("limit", "spent", "in_flight", "expected", "wanted", "fits"),
    [
        (10, 0, 0, 1, 20, 10),  # ten edits' credits take ten edits
        (10, 4, 3, 1, 5, 3),  # what is in flight counts as spent
        (10, 9.5, 0, 1, 1, 0),  # half an edit left is no edit
        (0.3, 0.1, 0.1, 0.1, 1, 1),  # sums of tenths are not refused by rounding
        (5, 5, 0, 0, 3, 3),  # an edit expected to cost nothing always fits
        (5, 7, 0, 1, 1, 0),  # already past the limit
        (5, 0, 0, 1, 0, 0),
    ],
)
def test_how_many_edits_fit(limit, spent, in_flight, expected, wanted, fits):
    assert BudgetState(limit, spent, in_flight).affordable(expected, wanted) == fits


def test_a_refusal_names_the_budget_its_limit_spent_in_flight_and_the_expected_cost():
    error = BudgetState(10, 6, 3.5, "the run's budget 'default'").refusal(1.5)
    assert isinstance(error, ApikleyBudgetExceededError) and isinstance(error, ApikleyError)
    assert str(error).startswith(
        "Over budget: the run's budget 'default' is 10 credits, 6 spent and 3.5 in flight, so an edit expected to "
        "cost 1.5 would go past it; nothing was submitted"
    )


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), True, "10", 1e13])
def test_a_budget_that_is_not_a_number_of_credits_is_refused_naming_it(value):
    with pytest.raises(ApikleyInputError, match=rf"^max_credits={value!r}: must be a number of credits"):
        check_credits("max_credits", value)


def test_no_budget_and_whole_numbers_are_taken():
    assert check_credits("max_credits", None) is None
    assert check_credits("max_credits", 3) == 3.0
