"""
The triggerer capacity benchmark runs end to end at a tiny N and prints a row per configuration.

It checks that the benchmark measures (every configuration polled, every poll succeeded, the
figures are real numbers), not how fast anything is.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest

from benchmarks import triggerer_capacity
from benchmarks.triggerer_capacity import LABELS
from benchmarks.triggerer_pollers import CONFIGURATIONS

pytestmark = pytest.mark.slow

N = 20
WINDOW = 3.0
INTERVAL = 1.0


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[dict], str]:
    """One tiny run of the benchmark: its exit code, its rows and what it printed."""
    rows_file = tmp_path_factory.mktemp("triggerer-capacity") / "rows.json"
    arguments = ["--n", str(N), "--window", str(WINDOW), "--interval", str(INTERVAL), "--json", str(rows_file)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = triggerer_capacity.main(arguments)
    return code, json.loads(rows_file.read_text()), printed.getvalue()


def test_the_run_succeeds_with_one_row_per_configuration(run):
    code, rows, _ = run
    assert code == 0
    assert [(row["configuration"], row["n"]) for row in rows] == [
        (configuration, N) for configuration in CONFIGURATIONS
    ]


def test_every_poller_polled_and_no_poll_failed(run):
    _, rows, _ = run
    expected_polls = N * WINDOW / INTERVAL
    for row in rows:
        assert row["failed_polls"] == 0, row
        assert row["polls_total"] >= N, row
        assert 0.5 * expected_polls <= row["polls_in_window"] <= 1.5 * expected_polls, row


def test_the_figures_are_real_numbers(run):
    _, rows, _ = run
    for row in rows:
        for key in ("polls_per_second", "lag_p50_ms", "lag_p99_ms", "rss_per_poller_bytes", "cpu_per_poll_us"):
            assert math.isfinite(row[key]), (key, row)
        assert 0 <= row["lag_p50_ms"] <= row["lag_p99_ms"] <= row["lag_max_ms"], row
        assert row["cpu_per_poll_us"] > 0, row
        assert row["rss_steady_bytes"] > 0 and row["rss_before_bytes"] > 0, row


def test_the_table_ratios_and_targets_are_printed(run):
    _, _, printed = run
    lines = printed.splitlines()
    for configuration in CONFIGURATIONS:
        (row,) = [line for line in lines if line.startswith(LABELS[configuration])]
        assert row.split()[len(LABELS[configuration].split())] == str(N)
    (ratios,) = [line for line in lines if line.split()[:1] == [str(N)] and line.strip().endswith("x")]
    assert len(ratios.split()) == 1 + len(CONFIGURATIONS) - 1
    # the targets are read at N=10,000, which this run does not measure
    assert sum("n/a" in line for line in lines) == 3
