"""
The triggerer copies benchmark runs end to end, tiny: both runs measured, every copy made whole.

It checks that the benchmark measures (the copies really copied, nothing failed, the figures are
real numbers), not how fast anything is.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest

from benchmarks import triggerer_copies

pytestmark = pytest.mark.slow


def test_a_tiny_run_measures_both_runs_and_copies_every_result(tmp_path):
    rows_file = tmp_path / "runs.json"
    arguments = ["--n", "20", "--copies", "2", "--mb", "1", "--interval", "1", "--warmup", "0.2"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = triggerer_copies.main([*arguments, "--json", str(rows_file)])
    quiet, busy = json.loads(rows_file.read_text())
    assert code == 0 and quiet["failed"] == busy["failed"] == []
    assert (quiet["copies"], quiet["copied_bytes"]) == (0, 0)
    assert (busy["copies"], busy["copied_bytes"]) == (2, 2 * 1024 * 1024)
    for run in (quiet, busy):
        assert run["n"] == 20 and run["peak_rss_bytes"] > 0
        assert all(math.isfinite(run[key]) for key in ("lag_p50_ms", "lag_p99_ms", "lag_max_ms"))
    assert "peak RSS grew" in printed.getvalue()
