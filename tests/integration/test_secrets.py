"""The API key never shows: not in logs, XCom, trigger rows, events or error messages."""

from __future__ import annotations

import json

import pytest

from airflow.providers.common.compat.sdk import DagRunState

from airflow_provider_qwen.emulator import EmulatorSettings, run_emulator
from tests.integration.test_example_dags import load_dag

pytestmark = [pytest.mark.integration, pytest.mark.dagrun, pytest.mark.slow, pytest.mark.usefixtures("airflow_db")]

CANARY_KEY = "sk-canary-7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c2e"


def everything_airflow_stored(dag_id: str) -> str:
    """XComs, trigger rows and task instances (with their resume events) of a DAG, as text."""
    from sqlalchemy import select

    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        xcoms = [str(row.value) for row in session.scalars(select(XComModel).where(XComModel.dag_id == dag_id))]
        triggers = [f"{row.classpath} {row.kwargs}" for row in session.scalars(select(Trigger))]
        instances = [
            f"{ti.next_kwargs} {ti.rendered_map_index} {ti.state}"
            for ti in session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id))
        ]
    return "\n".join(xcoms + triggers + instances)


@pytest.mark.parametrize("fail_fraction", [0.0, 1.0])
def test_the_key_never_appears_in_a_full_run(monkeypatch, tmp_path, caplog, capfd, fail_fraction):
    settings = EmulatorSettings(api_keys=[CANARY_KEY], latency=(0.05, 0.05, 0.1), fail_fraction=fail_fraction)
    with run_emulator(settings) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", emulator.airflow_connection())
        caplog.set_level("DEBUG")
        dag = load_dag("qwen_catalog_edit")
        if fail_fraction:  # each failure is the same: trying it once per edit is enough, and 3x faster
            dag.get_task("edit").partial_kwargs["retries"] = 0
        dag_run = dag.test(run_conf={"output_uri": f"file://{tmp_path}"})
    expected = DagRunState.SUCCESS if fail_fraction == 0 else DagRunState.FAILED
    assert dag_run.state == expected
    captured = capfd.readouterr()
    stored = everything_airflow_stored("qwen_catalog_edit")
    assert "apikley_task_id" in stored  # the search does look at what the run stored
    for where, text in {
        "logs": caplog.text,
        "stdout": captured.out,
        "stderr": captured.err,
        "database": stored,
    }.items():
        assert CANARY_KEY not in text, f"the API key leaked into {where}"
    for output in tmp_path.rglob("*.json"):
        assert CANARY_KEY not in output.read_text()


def test_a_wrong_key_fails_with_a_message_that_does_not_echo_it(monkeypatch, tmp_path, caplog, capfd):
    with run_emulator(EmulatorSettings(api_keys=["the-right-key"])) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", emulator.airflow_connection(CANARY_KEY))
        dag_run = load_dag("qwen_catalog_edit").test(run_conf={"output_uri": f"file://{tmp_path}"})
    assert dag_run.state == DagRunState.FAILED
    assert "401" in caplog.text + capfd.readouterr().out
    assert CANARY_KEY not in caplog.text
    assert json.dumps(CANARY_KEY) not in everything_airflow_stored("qwen_catalog_edit")
