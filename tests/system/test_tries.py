"""
One outcome whichever try: every operator through a failed first try and its retry, on the deployment.

``dags/qwen_system_tries.py`` fails the first try of each case after it paid for an Apikley task
(its docstring lists the cases and the two ways they fail). Two runs go at once: ``same``, whose
retries send the same request, and ``changed``, whose retries render a new prompt (the test sets a
Variable once each first try has failed). For each case the test counts the creates the emulator
accepted for it, and checks which Apikley task the result comes from, that the result's ``input``
is what that task was asked, the files stored, ``replaced_apikley_task_id``, and one asset event
where the case has an outlet.

A retry resumes an earlier try's task only for the same request, and only where Airflow keeps task
state across tries (3.3's task state store): before 3.3 every retry submits anew, by design, and the
expectations say so rather than skip.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import has_task_state_store
from tests.system.conftest import MEASUREMENTS_SECTION
from tests.system.deployment import AirflowDeployment, EmulatorProcess
from tests.system.waiting import StopWaiting, wait_for

pytestmark = [pytest.mark.system, pytest.mark.slow]

DAG_ID = "qwen_system_tries"
EDITED_ASSET = "apikley://system/tries"
VARIANTS = ("same", "changed")
#: Seconds an edit spends waiting, queuing and generating (each ±20 %): a first try's 1 s timeout
#: must pass while the edit still runs, however late the triggerer starts its trigger.
LATENCY = (2.0, 2.0, 3.0)
RUN_TIMEOUT_SECONDS = 600.0
#: The cases that pay for edits, and how their first try fails; ``sensor_raise`` waits for ``submit_raise``'s.
SUBMITTING = {
    "qwen_raise": "raise",
    "qwen_timeout": "timeout",
    "generic_timeout": "timeout",
    "batch_raise": "raise",
    "submit_raise": "raise",
}
BATCH, BATCH_SEEDS = "batch_raise", (1, 2)
SENSOR, SUBMIT = "sensor_raise", "submit_raise"
CASES = (*SUBMITTING, SENSOR)
WITH_OUTLETS = {"qwen_raise", SENSOR}


@dataclass(frozen=True)
class Expected:
    """
    What the retry of one case does.

    :param creates: creates paid per edit over both tries.
    :param resumed: the result comes from the first try's task (else from the retry's).
    :param names_replaced: the result names the first try's task as ``replaced_apikley_task_id``.
    """

    creates: int
    resumed: bool
    names_replaced: bool


def expected(case: str, variant: str) -> Expected:
    """What ``case`` must do in the ``variant`` run, on the Airflow installed."""
    if not has_task_state_store():
        return Expected(creates=2, resumed=False, names_replaced=False)  # nothing survives a try
    if variant == "changed":
        return Expected(creates=2, resumed=False, names_replaced=True)
    return Expected(creates=1, resumed=True, names_replaced=False)


def first_prompt(variant: str, task_id: str) -> str:
    """The prompt a task renders while its Variable is unset (as the DAG's template says)."""
    return f"{variant} {task_id}: sepia studio light"


def retry_prompt(variant: str, task_id: str) -> str:
    """The prompt the retry renders: the one the test sets in the ``changed`` run, whose edit looks different."""
    return (
        f"{variant} {task_id}: golden studio light, warmer" if variant == "changed" else first_prompt(variant, task_id)
    )


def test_a_retry_resumes_only_the_same_request_for_every_operator(
    deployment: AirflowDeployment, emulator: EmulatorProcess, system_workdir: Path, measurement
):
    outputs = {variant: system_workdir / f"tries-{variant}" for variant in VARIANTS}
    known_tasks = {task["taskId"] for task in emulator.tasks()}
    creates_before = emulator.stats()["accepted_create_tasks"]
    previous = emulator.configure(latency=list(LATENCY))["latency"]
    started = time.monotonic()
    try:
        runs = {
            variant: deployment.trigger(DAG_ID, {"variant": variant, "output_uri": f"file://{outputs[variant]}"})
            for variant in VARIANTS
        }
        change_prompts_between_tries(deployment, runs["changed"])
        states = {
            variant: deployment.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT_SECONDS)
            for variant, run_id in runs.items()
        }
        wall_seconds = time.monotonic() - started
    finally:
        emulator.configure(latency=previous)

    created = [task for task in emulator.tasks() if task["taskId"] not in known_tasks]
    assert emulator.stats()["accepted_create_tasks"] - creates_before == len(created)
    by_case = tasks_by_case(created)
    paid = {variant: {case: len(by_case.get((variant, case), [])) for case in SUBMITTING} for variant in VARIANTS}
    for variant, run_id in runs.items():
        tis = {ti["task_id"]: ti for ti in deployment.task_instances(DAG_ID, run_id)}
        assert states[variant] == "success", {task_id: (ti["state"], ti["try_number"]) for task_id, ti in tis.items()}
        for case in CASES:
            assert tis[case]["try_number"] == 2, f"{variant}: {case}'s first try did not fail as the DAG makes it"
        values = xcom_values(deployment, run_id)
        rendered = rendered_fields(deployment, run_id)
        for case in SUBMITTING:
            tasks, want = by_case.get((variant, case), []), expected(case, variant)
            edits = len(BATCH_SEEDS) if case == BATCH else 1
            assert len(tasks) == want.creates * edits, f"{variant}: {case} paid for {len(tasks)} tasks, {want}"
            check_case(case, variant, values[case], tasks, rendered[case], outputs[variant], want)
        check_sensor(variant, values[SENSOR], values[SUBMIT], outputs[variant])
        events = asset_events(deployment, run_id)
        assert events == Counter(WITH_OUTLETS), f"{variant}: one asset event per case with an outlet, from its retry"

    durations = run_durations(deployment, runs)
    measurement(
        MEASUREMENTS_SECTION,
        f"Try matrix ({'with' if has_task_state_store() else 'without'} a task state store): "
        + "; ".join(
            f"{variant} run {durations[variant]:.0f} s, creates "
            + ", ".join(f"{case} {count}" for case, count in paid[variant].items())
            for variant in VARIANTS
        )
        + f"; both runs done {wall_seconds:.0f} s after triggering",
    )


def change_prompts_between_tries(deployment: AirflowDeployment, run_id: str) -> dict[str, float]:
    """
    Set each submitting case's prompt Variable once its first try has failed, before its retry starts.

    Returns when each was set. ``retry_delay`` leaves seconds for it; a case that ends, or starts its
    retry, before its Variable is set stops the wait: the run could not test a changed request then.
    """
    changed_at: dict[str, float] = {}

    def all_changed() -> bool:
        rows = deployment.sql(
            "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = %s AND run_id = %s", (DAG_ID, run_id)
        )
        for task_id, state, try_number in rows:
            if task_id not in SUBMITTING or task_id in changed_at:
                continue
            if state == "up_for_retry":
                deployment.rest.request(
                    "POST",
                    "variables",
                    json={"key": f"qwen_tries_changed_{task_id}", "value": retry_prompt("changed", task_id)},
                )
                changed_at[task_id] = time.time()
            elif state in ("success", "failed", "upstream_failed") or (try_number or 0) > 1:
                raise StopWaiting(f"{task_id} is {state} in try {try_number} before its prompt could change")
        return len(changed_at) == len(SUBMITTING)

    wait_for(all_changed, timeout=RUN_TIMEOUT_SECONDS, what="every first try of the changed run to fail", interval=0.2)
    return changed_at


def tasks_by_case(created: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The emulator's tasks by ``(variant, task id)`` of the case that paid for them, oldest first."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for task in sorted(created, key=lambda task: task["createTime"]):
        variant, _, rest = task["request"]["input"]["prompt"].partition(" ")
        case = rest.partition(":")[0]
        assert variant in VARIANTS and case in SUBMITTING, f"a task no case of this test paid for: {task}"
        found.setdefault((variant, case), []).append(task)
    return found


def check_case(
    case: str,
    variant: str,
    value: Any,
    tasks: list[dict[str, Any]],
    rendered: dict[str, Any],
    output: Path,
    want: Expected,
) -> None:
    """The retry's value of one submitting case: from the right task, as asked, stored, naming what it replaced."""
    where = f"{variant}: {case}"
    items = value if case == BATCH else [value]
    edits = len(items)
    first, last = tasks[:edits], tasks[-edits:]
    source = first if want.resumed else last
    # the retry rendered the new prompt, whichever task answers it
    if case == BATCH:
        rendered_prompts = [item["prompt"] for item in rendered["inputs"]]
    else:
        rendered_prompts = [rendered["prompt"] if "prompt" in rendered else rendered["input"]["prompt"]]
    assert rendered_prompts == [retry_prompt(variant, case)] * edits, where
    asked = first_prompt(variant, case) if want.resumed else retry_prompt(variant, case)
    for index, (item, task) in enumerate(zip(items, source, strict=True)):
        assert item["apikley_task_id"] == task["taskId"], f"{where}: the result is not from the expected task"
        assert task["request"]["input"]["prompt"] == asked, where
        if case == BATCH:
            assert item["index"] == index and task["request"]["input"]["seed"] == BATCH_SEEDS[index], where
        else:
            assert item["input"] == task["request"]["input"], f"{where}: the input is not what its task was asked"
        replaced = first[index]["taskId"] if want.names_replaced else None
        assert item.get("replaced_apikley_task_id") == replaced, where
        assert item["state"] == ("waiting" if case == SUBMIT else "success"), where
    if case == SUBMIT:
        return
    # Named after the source (a batch item with its index). A first try that raised had stored its
    # edit under that name: a retry with the same request stores the same bytes there, and one whose
    # request changed stores its edit beside it, named after its own task, never over it.
    names = [f"source-{index}" for index in range(edits)] if case == BATCH else ["source"]
    left_by_first_try = {f"{name}.png" for name in names} if SUBMITTING[case] == "raise" else set()
    beside = SUBMITTING[case] == "raise" and asked != first_prompt(variant, case)
    stored = stored_files(items)
    assert stored == {
        f"{name}-{item['apikley_task_id']}.png" if beside else f"{name}.png"
        for name, item in zip(names, items, strict=True)
    }, where
    assert {path.name for path in (output / case).iterdir()} == stored | left_by_first_try, f"{where}'s folder"


def check_sensor(variant: str, value: dict[str, Any], submitted: dict[str, Any], output: Path) -> None:
    """The sensor's retry waits for the task its submit handed on, and copies its results where the submit said."""
    assert value["apikley_task_id"] == submitted["apikley_task_id"], variant
    assert value["input"] == submitted["input"] and value["state"] == "success", variant
    assert "replaced_apikley_task_id" not in value, variant
    assert stored_files([value]) == {"source.png"}, variant
    assert {path.name for path in (output / SUBMIT).iterdir()} == stored_files([value]), f"{variant}: sensor's folder"


def stored_files(items: list[dict[str, Any]]) -> set[str]:
    """The names of the files the items say they stored, each checked on disk (size and sha256)."""
    names = set()
    for item in items:
        for stored in item["stored"]:
            path = Path(urlsplit(stored["uri"]).path)
            content = path.read_bytes()
            assert len(content) == stored["size"] > 0 and hashlib.sha256(content).hexdigest() == stored["sha256"]
            names.add(path.name)
    return names


def xcom_values(deployment: AirflowDeployment, run_id: str) -> dict[str, Any]:
    rows = deployment.sql(
        "SELECT task_id, value FROM xcom WHERE dag_id = %s AND run_id = %s AND key = 'return_value'", (DAG_ID, run_id)
    )
    return dict(rows)


def rendered_fields(deployment: AirflowDeployment, run_id: str) -> dict[str, dict[str, Any]]:
    """Each task's template fields as its latest try rendered them."""
    rows = deployment.sql(
        "SELECT task_id, rendered_fields FROM rendered_task_instance_fields WHERE dag_id = %s AND run_id = %s",
        (DAG_ID, run_id),
    )
    return dict(rows)


def asset_events(deployment: AirflowDeployment, run_id: str) -> Counter[str]:
    rows = deployment.sql(
        "SELECT e.source_task_id FROM asset_event e JOIN asset a ON a.id = e.asset_id "
        "WHERE a.uri = %s AND e.source_dag_id = %s AND e.source_run_id = %s",
        (EDITED_ASSET, DAG_ID, run_id),
    )
    return Counter(task_id for (task_id,) in rows)


def run_durations(deployment: AirflowDeployment, runs: dict[str, str]) -> dict[str, float]:
    rows = deployment.sql(
        "SELECT run_id, extract(epoch FROM end_date - start_date) FROM dag_run WHERE dag_id = %s", (DAG_ID,)
    )
    seconds = {run_id: float(value) for run_id, value in rows}
    return {variant: seconds[run_id] for variant, run_id in runs.items()}
