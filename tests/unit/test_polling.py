from __future__ import annotations

import pytest

from airflow_provider_qwen.polling import POLL_CADENCE, poll_delay


def test_a_fixed_interval_is_kept_within_ten_percent_and_varies():
    delays = [poll_delay(elapsed=5.0, poll_interval=10.0) for _ in range(1000)]
    assert all(9.0 <= delay <= 11.0 for delay in delays)
    # waits that started together drift apart instead of polling in step
    assert max(delays) - min(delays) > 1.0


@pytest.mark.parametrize(("elapsed", "shortest", "longest"), [(0.0, 2, 3), (60.0, 5, 10), (600.0, 15, 30)])
def test_without_an_interval_the_cadence_follows_apikleys_advice(elapsed, shortest, longest):
    delays = [poll_delay(elapsed) for _ in range(200)]
    assert all(shortest <= delay <= longest for delay in delays)
    assert len(set(delays)) > 1


def test_the_cadence_ends_at_infinity():
    assert POLL_CADENCE[-1][0] == float("inf")
