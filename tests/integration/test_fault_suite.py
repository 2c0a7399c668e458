"""
Twenty mapped edits under each kind of fault: every result arrives, and each edit is paid once.

Runs ``qwen_image_edit_example`` with ``dag.test()`` against the emulator, once per fault kind,
and prints a table of fault kind x (edits completed, createTask accepted, faults injected, task
retries). ``make fault-suite`` shows it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow.providers.common.compat.sdk import DagRunState

from airflow_provider_qwen import waits
from airflow_provider_qwen.emulator import EmulatorSettings, RunningEmulator, run_emulator
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from airflow_provider_qwen.triggers.apikley import ApikleyTaskTrigger
from tests.conftest import API_KEY, has_task_state_store
from tests.emulator.conftest import png
from tests.integration.test_example_dags import load_dag, xcom_values

pytestmark = [pytest.mark.integration, pytest.mark.dagrun, pytest.mark.slow, pytest.mark.usefixtures("airflow_db")]

EDITS = 20


def maintenance_from_first_submit(monkeypatch: pytest.MonkeyPatch, emulator: RunningEmulator) -> tuple[()]:
    """
    Apikley answers 455 to every call for 1.5 s from the first createTask on.

    The window opens with the first submit rather than at a fixed time, so a slow start of the
    DAG run cannot let it close before any edit meets it. The emulator counts the 455s it sends.
    """
    real_create_task = ApikleyHook.create_task
    opened = []

    def create_task(self: ApikleyHook, *args, **kwargs):
        if not opened:
            opened.append(True)
            emulator.state.maintenance_until = time.time() + 1.5
        return real_create_task(self, *args, **kwargs)

    monkeypatch.setattr(ApikleyHook, "create_task", create_task)
    return ()


def worker_dies_after_each_submit(monkeypatch: pytest.MonkeyPatch, emulator: RunningEmulator) -> set[str]:
    """Each try that submitted a task is lost before it defers, as a worker that died would be."""
    real_defer = QwenImageToImageOperator.defer
    crashed: set[str] = set()

    def defer(self: QwenImageToImageOperator, *, trigger: ApikleyTaskTrigger, **kwargs):
        if trigger.apikley_task_id not in crashed:
            crashed.add(trigger.apikley_task_id)
            raise RuntimeError("worker lost right after createTask")
        return real_defer(self, trigger=trigger, **kwargs)

    monkeypatch.setattr(QwenImageToImageOperator, "defer", defer)
    return crashed


def triggerer_restarts_mid_wait(monkeypatch: pytest.MonkeyPatch, emulator: RunningEmulator) -> list[str]:
    """Each trigger is killed after its first query and started again from its serialized kwargs."""
    real_run = ApikleyTaskTrigger.run
    restarted: list[str] = []

    async def run(self: ApikleyTaskTrigger):
        restarted.append(self.apikley_task_id)
        first = asyncio.ensure_future(anext(real_run(self)))
        await asyncio.sleep(0.05)
        first.cancel()
        _, kwargs = self.serialize()
        async for event in real_run(ApikleyTaskTrigger(**json.loads(json.dumps(kwargs)))):
            yield event

    monkeypatch.setattr(ApikleyTaskTrigger, "run", run)
    return restarted


@dataclass
class FaultKind:
    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    #: Installs a fault the emulator's settings cannot express; returns what it injected, one entry per fault.
    patch: Callable[[pytest.MonkeyPatch, RunningEmulator], Sized] | None = None


FAULT_KINDS = [
    FaultKind("none"),
    FaultKind("429 storm on createTask", {"faults": {"createTask": {"rate_limited": 0.3, "retry_after": 0}}}),
    FaultKind("5xx burst on recordInfo", {"faults": {"recordInfo": {"server_error": 0.3, "html": 0.1}}}),
    FaultKind("455 maintenance window", patch=maintenance_from_first_submit),
    FaultKind("dropped connections", {"faults": {"recordInfo": {"drop": 0.3}, "results": {"drop": 0.2}}}),
    FaultKind("slow answers", {"faults": {"recordInfo": {"slow": 0.3, "slow_seconds": 0.5}}}),
    FaultKind("malformed bodies", {"faults": {"recordInfo": {"malformed": 0.3}}}),
    FaultKind("worker lost after createTask", patch=worker_dies_after_each_submit),
    FaultKind("triggerer restarted mid-wait", patch=triggerer_restarts_mid_wait),
]

#: The Markdown table docs/reliability.md quotes, one row per fault kind (see ``tests/measurements.py``).
TABLE_TITLE = "fault suite"
TABLE_HEADER = (
    "| fault kind | edits completed | createTask accepted | faults injected | task retries |",
    "|---|---:|---:|---:|---:|",
)


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch):
    """Poll every 50-100 ms instead of Apikley's advised seconds, so 20 edits take seconds."""
    monkeypatch.setattr(waits, "POLL_CADENCE", ((float("inf"), 0.05, 0.1),))


def retried_tries(dag_run) -> int:
    return sum(ti.try_number - 1 for ti in dag_run.get_task_instances() if ti.task_id == "edit")


#: Kinds that only change what the emulator answers: the provider's own handling, the same on every Airflow
#: line, so the older lines skip them (`make test-compat`). A lost worker and a restarted triggerer go through
#: Airflow's retries and trigger hand-over, which differ by version, and run everywhere.
AIRFLOW_INDEPENDENT = {
    kind.name for kind in FAULT_KINDS if kind.settings or kind.patch is maintenance_from_first_submit
}


#: Kinds that tests/system asserts on a real deployment of every line: each edit paid once, with no
#: fault and through a triggerer restart (test_deployment.py's deferred edits through a triggerer crash).
ON_DEPLOYMENT = {"none", "triggerer restarted mid-wait"}


def kind_marks(name: str) -> list[pytest.MarkDecorator]:
    """The markers that keep a kind out of `make test-compat`, and why (see pyproject.toml's markers)."""
    return [
        mark
        for mark, applies in (
            (pytest.mark.fault_matrix, name in AIRFLOW_INDEPENDENT),
            (pytest.mark.on_deployment, name in ON_DEPLOYMENT),
        )
        if applies
    ]


@pytest.mark.parametrize(
    "kind", [pytest.param(kind, id=kind.name, marks=kind_marks(kind.name)) for kind in FAULT_KINDS]
)
def test_every_edit_completes_and_is_paid_once(kind, monkeypatch, tmp_path, measurement):
    if kind.patch is worker_dies_after_each_submit and not has_task_state_store():
        pytest.skip("resuming needs Airflow 3.3's task state store; test_catalog_demo checks the resubmit before 3.3")
    # Faults start after the source image is uploaded, so every edit has the same, valid input.
    base = EmulatorSettings(api_keys=[API_KEY], latency=(0.05, 0.05, 0.1), random_seed=20)
    with run_emulator(base) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", emulator.airflow_connection())
        image_url = ApikleyHook().upload_file(png("#34495e"), "faults", file_name="source.png")
        emulator.state.settings = EmulatorSettings.model_validate({**base.model_dump(), **kind.settings})
        injected = kind.patch(monkeypatch, emulator) if kind.patch else ()
        dag_run = load_dag("qwen_image_edit_example").test(
            run_conf={"images": [image_url] * EDITS, "style": "warm light"}
        )
        results = xcom_values(dag_run, "edit")
        completed = sum(1 for result in results if result["state"] == "success" and result["result_urls"])
        faults = (
            len(injected)
            + sum(emulator.state.slowed.values())
            + sum(count for name, count in emulator.state.stats.items() if "fault:" in name or name.endswith(" 455"))
        )
        row = (kind.name, f"{completed}/{EDITS}", emulator.state.accepted_creates, faults, retried_tries(dag_run))
        measurement(TABLE_TITLE, "| " + " | ".join(map(str, row)) + " |", header=TABLE_HEADER)

    assert dag_run.state == DagRunState.SUCCESS
    assert completed == EDITS
    assert emulator.state.accepted_creates == EDITS
    assert len({result["apikley_task_id"] for result in results}) == EDITS
    if kind.settings or kind.patch:
        assert faults > 0, "the fault was not injected"
