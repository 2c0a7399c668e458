"""How long a trigger holds back an event that resumes a worker: counted from the deferral, configurable."""

from __future__ import annotations

import pytest

from airflow_provider_qwen.exceptions import ApikleyConfigurationError
from airflow_provider_qwen.triggers.apikley import RESUME_SETTLE_SECONDS, resume_settle_seconds, settle_delay

OPTION = "AIRFLOW__APIKLEY__RESUME_SETTLE_SECONDS"


def test_by_default_a_worker_resumes_ten_seconds_after_the_deferral_at_the_soonest():
    assert RESUME_SETTLE_SECONDS == 10.0
    assert settle_delay(deferred_at=1000.0, now=1000.0) == 10.0
    assert settle_delay(deferred_at=1000.0, now=1007.5) == 2.5
    assert settle_delay(deferred_at=1000.0, now=1010.0) == 0.0
    assert settle_delay(deferred_at=1000.0, now=5000.0) == 0.0  # a trigger taken over long after: no wait


@pytest.mark.parametrize(("configured", "delay"), [("3", 3.0), ("2.5", 2.5), ("0", 0.0), ("120", 120.0)])
def test_the_settle_time_is_read_from_the_apikley_section(monkeypatch, configured, delay):
    monkeypatch.setenv(OPTION, configured)
    assert resume_settle_seconds() == delay
    assert settle_delay(deferred_at=1000.0, now=1000.0) == delay


@pytest.mark.parametrize(
    ("configured", "shown"),
    [
        ("-1", "resume_settle_seconds='-1'"),
        ("nan", "resume_settle_seconds='nan'"),
        ("inf", "resume_settle_seconds='inf'"),
        ("ten", "resume_settle_seconds (a text, not shown)"),  # a text may be a secret put in the wrong place
        ("", "resume_settle_seconds (a text, not shown)"),
    ],
)
def test_a_settle_time_that_is_not_seconds_is_refused_naming_the_option_and_a_number(monkeypatch, configured, shown):
    monkeypatch.setenv(OPTION, configured)
    with pytest.raises(ApikleyConfigurationError) as excinfo:
        settle_delay(deferred_at=1000.0, now=1000.0)
    assert str(excinfo.value).startswith(f"[apikley] {shown}: ")
    assert "a number of seconds, 0 or more" in str(excinfo.value)
