"""
CPU a task process spends starting a provider task, against a bare ``PythonOperator`` task and an ``HttpOperator`` one.

``python -m benchmarks.task_start [--runs 15]``

Each sample is a fresh interpreter that first imports what every task process has before it runs
a task (Airflow, the Task SDK's task runner), then is timed (``time.process_time``) doing what
starting one task adds: loading the plugins, as the task runner does, importing the task's
operator and building it. The HTTP clients a task imports when it runs (``requests`` and
``aiohttp``, through apache-airflow-providers-http) are not part of starting it. The kinds of task
alternate, so drift on a shared machine hits each alike.
It prints the median, the spread and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

PRELOADED = "import airflow.sdk, airflow.sdk.execution_time.task_runner"

TASKS = {
    "PythonOperator": (
        "from airflow.providers.standard.operators.python import PythonOperator\n"
        "PythonOperator(task_id='t', python_callable=print)"
    ),
    "HttpOperator": (
        "from airflow.providers.http.operators.http import HttpOperator\n"
        "HttpOperator(task_id='t', http_conn_id='apikley_http', endpoint='/api/v1/jobs/createTask')"
    ),
    "QwenImageToImageOperator": (
        "from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator\n"
        "QwenImageToImageOperator(task_id='t', prompt='sepia', image_url='https://example.org/a.png', deferrable=True)"
    ),
}

SAMPLE = """
{preloaded}
import time
started = time.process_time()
from airflow.sdk.plugins_manager import integrate_macros_plugins
integrate_macros_plugins()
{task}
print(time.process_time() - started)
"""


def sample(task: str) -> float:
    """CPU seconds one fresh interpreter spends starting ``task``."""
    code = SAMPLE.format(preloaded=PRELOADED, task=task)
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return float(output.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.task_start", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="fresh interpreters per kind of task (default: 15)")
    args = parser.parse_args(argv)
    samples: dict[str, list[float]] = {name: [] for name in TASKS}
    for _ in range(args.runs):
        for name, task in TASKS.items():
            samples[name].append(sample(task))
    bare = statistics.median(samples["PythonOperator"])
    print("| task | CPU ms to start, median | min / max ms | vs PythonOperator |")
    print("|---|---:|---:|---:|")
    for name, seconds in samples.items():
        median = statistics.median(seconds)
        print(
            f"| {name} | {median * 1000:.1f} | {min(seconds) * 1000:.1f} / {max(seconds) * 1000:.1f} "
            f"| {median / bare:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
