"""The recordInfo benchmark runs end to end (with a short measurement) and prints its figure."""

from __future__ import annotations

import re

from airflow_provider_qwen.emulator import bench


def test_the_benchmark_measures_and_prints_a_rate(capsys):
    bench.main(["--seconds", "0.3", "--concurrency", "4", "--no-baseline"])
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("emulator")]
    rate = float(re.findall(r"(\d+)\s+-$", row)[0])
    assert rate > 0
