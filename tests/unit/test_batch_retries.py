"""What a retry takes over: its own deadline, and a warning or a failure for a create that may have been paid for."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest

from airflow_provider_qwen.exceptions import ApikleyOrphanedIntentError
from airflow_provider_qwen.resume import orphaned_intents, try_deadline


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
