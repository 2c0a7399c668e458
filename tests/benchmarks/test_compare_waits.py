"""
The benchmark DAGs of ``benchmarks.compare_waits`` are correct: each edits as asked, and pays once per edit.

Each DAG runs with ``dag.test()`` against an in-process emulator; how fast they run is the
benchmark's business, not this test's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow.providers.common.compat.sdk import DagRunState

from airflow_provider_qwen.emulator import EmulatorSettings, RunningEmulator, run_emulator
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from benchmarks.compare_connections import connection_environment
from benchmarks.compare_workloads import DAGS_FOLDER, WORKLOADS, Workload, dag_conf, result_urls
from tests.conftest import API_KEY
from tests.emulator.conftest import png
from tests.integration.test_example_dags import load_dag, task_states, xcom_values

pytestmark = [pytest.mark.integration, pytest.mark.dagrun, pytest.mark.usefixtures("airflow_db")]

EDITS = 2


@pytest.fixture(autouse=True)
def bench_dags_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """``dag.test()`` serializes the DAGs of the dags-folder bundle first: make it the benchmark's folder."""
    from airflow import settings

    monkeypatch.setattr(settings, "DAGS_FOLDER", str(DAGS_FOLDER))


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningEmulator]:
    """An emulator whose edits end within the DAGs' first or second poll, and both connections to it."""
    with run_emulator(EmulatorSettings(api_keys=[API_KEY], latency=(0.1, 0.1, 0.2), random_seed=7)) as running:
        environment = connection_environment(running.airflow_connection(), running.base_url, API_KEY)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        yield running


def load_bench_dag(dag_id: str):
    return load_dag(dag_id, DAGS_FOLDER)


@pytest.mark.parametrize("workload", WORKLOADS, ids=[workload.dag_id for workload in WORKLOADS])
def test_every_edit_succeeds_and_is_created_once(workload: Workload, emulator: RunningEmulator, monkeypatch):
    if workload.dag_id == "bench_provider_callbacks":
        # its callback URL: no api-server listens there, so its waits poll as they do when one cannot be asked
        monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://127.0.0.1:9")
    image_url = ApikleyHook().upload_file(png("#2c7fb8"), "bench", file_name="source.png")

    dag_run = load_bench_dag(workload.dag_id).test(run_conf=dag_conf(EDITS, image_url))

    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)
    results = xcom_values(dag_run, workload.result_task_id)
    assert len(results) == EDITS
    assert all(result_urls(result) for result in results), results
    assert emulator.state.accepted_creates == EDITS
    assert emulator.stats()["tasks_by_state"] == {"success": EDITS}


def test_the_floor_dag_runs_as_many_tasks_and_calls_nothing(emulator: RunningEmulator):
    from benchmarks.compare_workloads import NOOP

    dag_run = load_bench_dag(NOOP.dag_id).test(run_conf=dag_conf(EDITS, "https://files.example.org/a.png"))

    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)
    assert sorted(value["seed"] for value in xcom_values(dag_run, NOOP.result_task_id)) == list(range(EDITS))
    assert emulator.stats()["requests"] == {}


def test_the_deferral_floor_dag_defers_each_task_for_as_long_as_an_edit_and_calls_nothing(emulator: RunningEmulator):
    from benchmarks.compare_workloads import DEFERRAL_FLOOR

    conf = dag_conf(EDITS, "https://files.example.org/a.png", wait_seconds=1.0)
    dag_run = load_bench_dag(DEFERRAL_FLOOR.dag_id).test(run_conf=conf)

    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)
    waits = [ti for ti in dag_run.get_task_instances() if ti.task_id == DEFERRAL_FLOOR.result_task_id]
    assert len(waits) == EDITS
    assert all((ti.end_date - ti.start_date).total_seconds() >= 1.0 for ti in waits), "a task did not wait"
    assert emulator.stats()["requests"] == {}
