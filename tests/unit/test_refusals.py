"""Refused callbacks in the api-server's log: a line a minute of each kind, whatever the flood."""

from __future__ import annotations

import logging

from airflow_provider_qwen.api_server.refusals import RefusalLog


def test_a_refusal_log_keeps_one_line_per_kind_per_interval_and_counts_the_rest(caplog):
    now = [0.0]
    refusals = RefusalLog(logging.getLogger("refusals-test"), interval=60, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="refusals-test"):
        for second in range(120):
            now[0] = float(second)
            refusals.warning("signature", "bad signature for task %s", second)
            refusals.warning("stale", "stale callback for task %s", second)
    assert [record.getMessage() for record in caplog.records] == [
        "bad signature for task 0",
        "stale callback for task 0",
        "bad signature for task 60 (and 59 more refusals of this kind since the last line, not logged)",
        "stale callback for task 60 (and 59 more refusals of this kind since the last line, not logged)",
    ]
