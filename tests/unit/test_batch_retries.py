"""What a batch's retry takes over: each item's latest task, resumed only for the same request, paid once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest

from airflow_provider_qwen.batch_ledger import LedgerEntry, items_named, plan_retry
from airflow_provider_qwen.exceptions import ApikleyOrphanedIntentError
from airflow_provider_qwen.resume import orphaned_intents, try_deadline

SAME, OTHER = "a" * 32, "b" * 32


def entry(task: str | None, fingerprint: str = SAME, **fields) -> LedgerEntry:
    return LedgerEntry(task and task * 32, 100.0, fingerprint, **fields)


def test_a_retry_resumes_only_items_sent_the_same_request_that_did_not_end_badly():
    earlier = {
        0: entry("0"),
        1: entry("1", fingerprint=OTHER),
        2: entry("2", state="failed"),
        3: entry("3", state="timeout"),
        4: entry("4", state="error"),
        5: entry("5", state="success"),
        6: entry(None, replaced_apikley_task_id="6" * 32),
        8: entry("8"),
    }
    plan = plan_retry(earlier, [SAME] * 8, outcomes={8: ("8" * 32, "failed")})

    assert plan.resumed == [0, 5]
    assert plan.submit == [1, 2, 3, 4, 6, 7]
    assert (plan.changed, plan.ended_badly, plan.orphaned) == ([1], [2, 3, 4], [6])
    assert plan.replaced == {1: "1" * 32, 2: "2" * 32, 3: "3" * 32, 4: "4" * 32, 6: "6" * 32}
    assert plan.entries[5].state is None  # waited for again, and reported as it ends now
    assert plan.entries[2] == earlier[2]  # kept until the item is submitted anew
    assert 8 not in plan.entries  # beyond this try's items


def test_an_outcome_counts_only_for_the_task_it_names():
    earlier = {0: entry("0"), 1: entry("1")}
    outcomes = {0: ("0" * 32, "failed"), 1: ("9" * 32, "failed")}  # item 1's outcome is of an older task
    assert plan_retry(earlier, [SAME, SAME], outcomes).submit == [0]


def test_an_entry_reads_back_as_written_and_a_broken_one_says_what_is_wrong():
    written = LedgerEntry("c" * 32, 5.5, SAME, replaced_apikley_task_id="d" * 32, state="failed")
    assert LedgerEntry.from_record(written.to_record(generation=2)) == written
    assert LedgerEntry.from_record(entry(None).to_record(1)).apikley_task_id is None
    for broken, problem in [
        ("x", "must be an object"),
        ({**written.to_record(1), "apikley_task_id": "../etc"}, "apikley_task_id='../etc'"),
        ({**written.to_record(1), "submitted_at": "soon"}, "submitted_at='soon'"),
        ({**written.to_record(1), "generation": None}, "generation=None"),
        ({**written.to_record(1), "state": "lost"}, "state='lost'"),
    ]:
        with pytest.raises(ValueError, match=problem):
            LedgerEntry.from_record(broken)


def test_items_are_named_as_inputs_runs_shortened_and_the_rest_counted():
    assert items_named([2, 3]) == "inputs[2], inputs[3]"
    assert items_named([0, 5, 6, 7, 9]) == "inputs[0], inputs[5..7], inputs[9]"
    assert items_named(range(0, 40, 2)) == ", ".join(f"inputs[{i}]" for i in range(0, 20, 2)) + " (and 10 more)"


def test_orphaned_intents_warn_of_the_second_charge_or_fail_naming_the_items():
    log = mock.Mock()
    orphaned_intents("resubmit", "inputs[3]", log)
    (message, *args), _ = log.warning.call_args
    assert "inputs[3]" in message % tuple(args) and "charged a second time" in message % tuple(args)
    with pytest.raises(ApikleyOrphanedIntentError, match=r"inputs\[3\].*on_orphaned_intent='fail' submits nothing"):
        orphaned_intents("fail", "inputs[3]", log)


def test_a_try_waits_its_timeout_from_now_or_less_when_execution_timeout_ends_sooner():
    now = time.time()
    ti = mock.Mock(start_date=None)
    assert try_deadline({"ti": ti}, 60.0, timedelta(hours=1)) == pytest.approx(now + 60, abs=1)
    ti.start_date = datetime.now(UTC) - timedelta(seconds=50)
    assert try_deadline({"ti": ti}, 600.0, timedelta(seconds=60)) == pytest.approx(now + 10, abs=1)
    assert try_deadline({"ti": ti}, 600.0, None) == pytest.approx(now + 600, abs=1)
