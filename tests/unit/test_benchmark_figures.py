"""The figures ``benchmarks.compare_waits`` prints about creates: the 429s and the create rate against the limit."""

from __future__ import annotations

from benchmarks.compare_waits import Measurement, answers_between, create_rate, creates_per_window, table
from benchmarks.compare_workloads import NOOP, PROVIDER


def test_creates_evenly_spaced_at_the_limit_are_the_limit_per_window():
    assert creates_per_window([index * 0.5 for index in range(200)], 10.0) == 20.0
    assert creates_per_window([index * 0.525 for index in range(200)], 10.0) == 10 / 0.525
    assert creates_per_window([5.0], 10.0) == creates_per_window([], 10.0) == 0.0


def test_the_429s_are_counted_between_two_statistics():
    before = {"api_codes": {"createTask 429": 3, "createTask 200": 10}}
    after = {"api_codes": {"createTask 429": 5, "createTask 200": 210}}
    assert answers_between(before, after, "createTask 429") == 2
    assert answers_between({"api_codes": {}}, {"api_codes": {}}, "createTask 429") == 0


def test_the_table_shows_the_429s_and_the_create_rate_against_the_limit():
    edits = Measurement(PROVIDER, edits=200, run_id="r", edit_seconds=6.0, rate_limited=1, creates_per_window=19.0)
    floor = Measurement(NOOP, edits=200, run_id="f", edit_seconds=6.0)
    for measurement in (edits, floor):
        measurement.cpu_seconds = dict.fromkeys(
            ("scheduler", "triggerer", "api-server", "workers", "dag-processor"), 1.0
        )
        measurement.peak_rss = {"scheduler": 0, "triggerer": 0}
    header, _, provider_row, floor_row = table([edits, floor], rate_limit=20)
    assert "| createTask 429s | creates per 10 s (of the limit) |" in header
    assert "| 1 | 19.0 (95 %) |" in provider_row
    assert "| 0 | n/a |" in floor_row
    assert create_rate(edits, 1000) == "19.0 (2 %)"
