"""
One outcome whichever way an edit finishes, on the real deployment and under ``airflow dags test``.

``dags/qwen_system_paths.py`` makes the same edit through every path each operator offers (its
docstring lists them). The deployment runs it while ``airflow dags test`` runs its twin at the same
time, against an emulator of its own; then every case must show the same outcome: the XCom value
(but for ids and folders) and the mapped length downstream tasks see, the stored files and their
sha256, one asset event per ETL edit from that task, one ``on_success_callback``, the extra link,
the credits and the final log line. Where each case ended is checked too: only the cases with
nothing left for a worker end in the triggerer, on every Airflow line where the provider decides
they can (its ``end_in_triggerer: ...`` log line says which way it went).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.system.airflow_env import component_environment, openlineage_events
from tests.system.conftest import MEASUREMENTS_SECTION, PARALLELISM
from tests.system.deployment import AirflowDeployment, EmulatorProcess
from tests.system.waiting import wait_for

pytestmark = [pytest.mark.system, pytest.mark.slow]

DAG_ID, CLI_DAG_ID = "qwen_system_paths", "qwen_system_paths_cli"
CONSUMER_DAG_ID = "qwen_system_paths_consumer"
EDITED_ASSET, EDITED_MAPPED_ASSET = "apikley://system/edited", "apikley://system/edited-mapped"
#: A bound that stops a run that hangs, not a target: Airflow 3.1's `airflow dags test` took 13 s a
#: task on a two-core machine under a load of 8 (36 of the matrix's tasks in 480 s).
RUN_TIMEOUT_SECONDS = 900.0
#: Seconds an edit takes on the deployment's emulator in this test: long enough that a sensor
#: started after its submit still finds the edit running, and defers.
LATENCY = (1.5, 2.5, 4.0)

OPERATOR_CASES = [f"{kind}_{path}" for kind in ("qwen", "generic") for path in ("poked", "resumed", "triggerer")]
ETL_CASES = ["etl_qwen_poked", "etl_qwen_deferred", "etl_generic_deferred"]
#: The cases whose OpenLineage is enabled: the ETL ones, and a plain deferred edit.
LINEAGE_CASES = [*ETL_CASES, "lineage_qwen_deferred"]
SENSOR_CASES = [f"sensor_{given}_{mode}" for given in ("dict", "id") for mode in ("poked", "deferred")]
EDIT_CASES = OPERATOR_CASES + LINEAGE_CASES + SENSOR_CASES
#: The cases that must end in the triggerer where the provider ends tasks there: deferred, with
#: nothing left for a worker. Elsewhere they resume on a worker, with the same outcome.
ENDED_IN_TRIGGERER = {"qwen_triggerer", "generic_triggerer"}
#: Whether the provider ends tasks in the triggerer, by Airflow line, as found on each line's deployment
#: (``_compat.trigger_xcom_set``: each line's ``XCom.set`` takes ``_mapped_length``). A newer line is
#: held to what the provider logs it decided there.
ENDS_IN_TRIGGERER_ON = {"3.1": True, "3.2": True, "3.3": True}
#: The provider's one line per process about ending tasks in the triggerer, and what it says when it does.
END_IN_TRIGGERER_DECISION = re.compile(r"end_in_triggerer: ([^\"\n]*)")
ENDS_THERE = "tasks with nothing left for a worker end in the triggerer"
MAPPED_OVER = ("qwen_poked", "qwen_resumed", "qwen_triggerer", "generic_triggerer")
#: The pool of every case but the deferred two-step ones (see the DAG file).
HELD_POOL = "qwen_system_paths_held"
#: The provider's last line about a successful edit.
OUTCOME_LINE = re.compile(r"Apikley task \w+ succeeded: [^\"\\\n\[]*\w")


def test_every_path_gives_the_same_outcome(
    deployment: AirflowDeployment, emulator: EmulatorProcess, system_workdir, measurement
):
    outputs = {"deployed": system_workdir / "paths", "cli": system_workdir / "paths-cli"}
    previous = emulator.configure(latency=list(LATENCY))["latency"]
    started = time.monotonic()
    try:
        with EmulatorProcess(system_workdir / "cli-emulator", latency=(0.2, 0.3, 0.5)) as quick:
            cli_log = system_workdir / "logs" / "dags-test.log"
            with cli_log.open("wb") as log:
                command = ["dags", "test", CLI_DAG_ID, "--conf", output_conf(outputs["cli"])]
                cli = subprocess.Popen(
                    [sys.executable, "-m", "airflow", *command],
                    env=component_environment(
                        deployment.settings,
                        {**deployment.extra_env, "AIRFLOW_CONN_APIKLEY_DEFAULT": quick.airflow_connection()},
                    ),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                try:
                    wait_for(lambda: deployment.rest.dag(CONSUMER_DAG_ID), timeout=120, what="the consumer DAG")
                    deployment.rest.set_paused(CONSUMER_DAG_ID, False)
                    set_pool_slots(deployment, 0)
                    run_id = deployment.trigger(DAG_ID, json.loads(output_conf(outputs["deployed"])))
                    wait_for(
                        lambda: sensors_past_their_first_check(deployment, run_id),
                        timeout=RUN_TIMEOUT_SECONDS,
                        what="the deferrable sensors' first checks",
                    )
                    set_pool_slots(deployment, PARALLELISM)
                    state = deployment.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT_SECONDS)
                    deployed_seconds = time.monotonic() - started
                    cli_status = cli.wait(timeout=RUN_TIMEOUT_SECONDS)
                finally:
                    cli.kill()
    finally:
        emulator.configure(latency=previous)
    tis = deployment.task_instances(DAG_ID, run_id)
    assert state == "success", Counter((ti["task_id"], ti["state"]) for ti in tis)
    assert cli_status == 0, cli_log.read_text()[-3000:]
    (cli_run_id,) = [row[0] for row in deployment.sql("SELECT run_id FROM dag_run WHERE dag_id = %s", (CLI_DAG_ID,))]

    logs = task_logs(deployment, DAG_ID, run_id)
    triggerer_log = (deployment.log_dir / "triggerer.log").read_text(errors="replace")
    deployed = outcomes(deployment, DAG_ID, run_id, outputs["deployed"], logs, stray=triggerer_log)
    cli = outcomes(deployment, CLI_DAG_ID, cli_run_id, outputs["cli"], cli_log_lines(cli_log))
    reference = deployed["qwen_poked"]
    assert reference["value"]["state"] == "success" and reference["stored"], reference
    for runner, seen in (("deployed", deployed), ("airflow dags test", cli)):
        for case in EDIT_CASES:
            assert seen[case]["value"] == reference["value"], f"{runner}: {case}"
            assert seen[case]["stored"] == reference["stored"], f"{runner}: {case}'s stored files"
            assert seen[case]["link"] == reference["link"], f"{runner}: {case}'s extra link"
            assert seen[case]["outcome_lines"] == reference["outcome_lines"], f"{runner}: {case}'s log"
        for case in MAPPED_OVER:
            assert seen[case]["mapped_length"] == len(reference["value"]), f"{runner}: mapping over {case}"
        for case in [*ETL_CASES, "batch"]:
            assert seen[case]["asset_events"] == [{"source_task_id": case, "extra": outlet_extra(seen[case]["raw"])}], (
                f"{runner}: {case}"
            )
            assert seen[case]["callbacks"] == 1, f"{runner}: {case}'s on_success_callback"
        for case in [*OPERATOR_CASES, *SENSOR_CASES, "lineage_qwen_deferred"]:
            assert seen[case]["asset_events"] == [] and seen[case]["callbacks"] == 0, f"{runner}: {case}"
        batch = seen["batch"]["raw"]
        assert [item["state"] for item in batch] == ["success", "success"], batch
        assert [hashes(item["stored"]) for item in batch] == [
            [(name, size, sha256) for _, size, sha256 in reference["stored"]]
            for name in ("source-0.png", "source-1.png")
        ], "a batch's items are named after their source and index, with the same bytes as the single edits"
        assert {item["credits_consumed"] for item in batch} == {reference["value"]["credits_consumed"]}

    # OpenLineage: one COMPLETE event with the edit's facets from each case that enabled it, the same on every path
    lineage = {
        runner: wait_for(
            lambda dag_id=dag_id: complete_events(deployment, dag_id, LINEAGE_CASES),
            timeout=60,
            what=f"the OpenLineage events of {dag_id}",
        )
        for runner, dag_id in (("deployed", DAG_ID), ("airflow dags test", CLI_DAG_ID))
    }
    expected_lineage = lineage["deployed"]["etl_qwen_poked"]
    assert expected_lineage["outputs"] == [{"namespace": "file", "name": "<folder>/source.png"}], expected_lineage
    for runner, events in lineage.items():
        assert events == dict.fromkeys(LINEAGE_CASES, expected_lineage), runner

    # the data-aware ETL: three mapped edits with an outlet, one event each, and the consumer runs
    mapped_events = deployment.sql(
        "SELECT e.source_task_id, e.source_map_index FROM asset_event e JOIN asset a ON a.id = e.asset_id "
        "WHERE a.uri = %s AND e.source_dag_id = %s AND e.source_run_id = %s",
        (EDITED_MAPPED_ASSET, DAG_ID, run_id),
    )
    assert sorted(mapped_events) == [("etl_mapped", index) for index in range(3)]
    wait_for(
        lambda: ("success",) in deployment.sql("SELECT state FROM dag_run WHERE dag_id = %s", (CONSUMER_DAG_ID,)),
        timeout=60,
        what=f"{CONSUMER_DAG_ID} to run on the mapped edits' asset events",
    )

    decisions = end_in_triggerer_decisions(deployment)
    assert len(decisions) == 1, decisions  # the same way in every triggerer process of the deployment
    ends_there = decisions.pop().startswith(ENDS_THERE)
    assert ends_there == ENDS_IN_TRIGGERER_ON.get(airflow_line(), ends_there), f"Airflow {airflow_line()}"
    ended_in_triggerer = {case for case in EDIT_CASES if deployed[case]["ended_in_triggerer"]}
    assert ended_in_triggerer == (ENDED_IN_TRIGGERER if ends_there else set())
    deferred = {case for case in SENSOR_CASES if deployed[case]["deferred"]}
    assert deferred == {"sensor_dict_deferred", "sensor_id_deferred"}, "the hand-off must be tested across a deferral"
    assert not any(cli[case]["ended_in_triggerer"] for case in EDIT_CASES)
    noticed = end_latencies(deployment, emulator, run_id, {case: deployed[case]["raw"] for case in OPERATOR_CASES})
    measurement(
        MEASUREMENTS_SECTION,
        f"Path matrix: {len(EDIT_CASES)} edits + a batch of 2, each on the deployment and under `airflow dags test`, "
        f"one outcome on every path; the deployed run took {deployed_seconds:.0f} s. Apikley completeTime -> task "
        "end: " + ", ".join(f"{case} {seconds:.1f} s" for case, seconds in noticed.items()),
    )


def outlet_extra(value: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
    """What an edit's (or a small batch's) asset event must say: where its stored results are."""
    if isinstance(value, list):  # a batch: every item's
        return {"result_uris": [stored["uri"] for item in value for stored in item["stored"]]}
    return {"apikley_task_id": value["apikley_task_id"], "result_uris": [stored["uri"] for stored in value["stored"]]}


def airflow_line() -> str:
    """The installed Airflow's line, e.g. ``"3.2"``."""
    from importlib.metadata import version

    return ".".join(version("apache-airflow").split(".")[:2])


def end_in_triggerer_decisions(deployment: AirflowDeployment) -> set[str]:
    """What the provider logged about ending tasks in the triggerer, in any log of the deployment's runs."""
    logs = [deployment.log_dir / "triggerer.log", *(deployment.airflow_home / "logs").rglob("*.log*")]
    return {
        decision
        for path in logs
        if path.is_file()
        for decision in END_IN_TRIGGERER_DECISION.findall(path.read_text(errors="replace"))
    }


def complete_events(deployment: AirflowDeployment, dag_id: str, cases: list[str]) -> dict[str, Any] | None:
    """
    The COMPLETE event of each of ``cases``' tasks in ``dag_id`` with what differs between them left
    out; ``None`` until every case has one. Other tasks must have sent none: their lineage is off.
    """
    found: dict[str, list[dict[str, Any]]] = {}
    files = openlineage_events(deployment.airflow_home)
    for path in files.parent.glob(f"{files.name}-*"):
        event = json.loads(path.read_text())
        dag, _, task_id = event["job"]["name"].partition(".")
        if dag != dag_id or event["eventType"] != "COMPLETE" or not task_id:
            continue
        query = event["run"]["facets"].get("externalQuery", {}).get("externalQueryId")
        datasets = {
            side: [{"namespace": item["namespace"], "name": item["name"]} for item in event[side]]
            for side in ("inputs", "outputs")
        }
        found.setdefault(task_id, []).append(normalized({**datasets, "external_query": query}, query))
    assert set(found) <= set(cases), f"lineage from tasks that did not enable it: {set(found) - set(cases)}"
    if set(found) != set(cases):
        return None
    assert all(len(events) == 1 for events in found.values()), found
    return {task_id: events[0] for task_id, events in found.items()}


def end_latencies(
    deployment: AirflowDeployment, emulator: EmulatorProcess, run_id: str, results: dict[str, dict[str, Any]]
) -> dict[str, float]:
    """Seconds from Apikley's ``completeTime`` of each case's edit to its task instance's end."""
    ended = dict(
        deployment.sql(
            "SELECT task_id, extract(epoch FROM end_date) FROM task_instance WHERE dag_id = %s AND run_id = %s",
            (DAG_ID, run_id),
        )
    )
    return {
        case: float(ended[case]) - emulator.record(result["apikley_task_id"])["completeTime"] / 1000
        for case, result in results.items()
    }


def set_pool_slots(deployment: AirflowDeployment, slots: int) -> None:
    """Create or resize the pool that holds every case but the deferred two-step ones."""
    try:
        deployment.rest.request(
            "PATCH", f"pools/{HELD_POOL}", json={"name": HELD_POOL, "slots": slots, "include_deferred": False}
        )
    except requests.HTTPError as err:
        if err.response is None or err.response.status_code != 404:
            raise
        deployment.rest.request("POST", "pools", json={"name": HELD_POOL, "slots": slots, "include_deferred": False})


def sensors_past_their_first_check(deployment: AirflowDeployment, run_id: str) -> bool:
    """Whether both deferrable sensors have checked once (and so deferred, or ended)."""
    rows = deployment.sql(
        "SELECT count(*) FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id IN %s "
        "AND state IN ('deferred', 'success', 'failed', 'upstream_failed')",
        (DAG_ID, run_id, ("sensor_dict_deferred", "sensor_id_deferred")),
    )
    return rows[0][0] == 2


def output_conf(folder: Path) -> str:
    return json.dumps({"output_uri": f"file://{folder}"})


def outcomes(
    deployment: AirflowDeployment, dag_id: str, run_id: str, output: Path, logs: dict[str, str], stray: str = ""
) -> dict[str, dict[str, Any]]:
    """
    What a user sees of each case of one run, with what differs between cases (ids, folders) left out.

    :param stray: the triggerer's own log. Airflow's triggerer stops filing a trigger's lines under
        its task once the trigger has ended, and reads lines apart from events: a line the trigger
        logged just before its end can land there. Lines naming the case's Apikley task count then.
    """
    where = (dag_id, run_id)
    xcoms = deployment.sql("SELECT task_id, key, value FROM xcom WHERE dag_id = %s AND run_id = %s", where)
    values = {task_id: value for task_id, key, value in xcoms if key == "return_value"}
    links = {task_id: value for task_id, key, value in xcoms if key == "_link_ApikleyTaskLink"}
    lengths = dict(deployment.sql("SELECT task_id, length FROM task_map WHERE dag_id = %s AND run_id = %s", where))
    fields = Counter(
        task_id.removeprefix("fields_of_")
        for (task_id,) in deployment.sql(
            "SELECT task_id FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id LIKE 'fields_of_%%' "
            "AND state = 'success'",
            where,
        )
    )
    events = Counter()
    event_rows = deployment.sql(
        "SELECT e.source_task_id, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
        "WHERE a.uri = %s AND e.source_dag_id = %s AND e.source_run_id = %s",
        (EDITED_ASSET, dag_id, run_id),
    )
    by_task: dict[str, list[dict[str, Any]]] = {}
    for source_task_id, extra in event_rows:
        by_task.setdefault(source_task_id, []).append({"source_task_id": source_task_id, "extra": extra})
    callbacks = Counter(path.stem.split("-")[0] for path in (output / "callbacks").glob("*.json"))
    seen = {}
    for task_id, value in values.items():
        apikley_task_id = value.get("apikley_task_id") if isinstance(value, dict) else None
        log = logs.get(task_id, "")
        if apikley_task_id and not OUTCOME_LINE.search(log):
            log += "".join(line + "\n" for line in stray.splitlines() if apikley_task_id in line)
        seen[task_id] = {
            "raw": value,
            "value": normalized(value, apikley_task_id),
            "stored": hashes(value.get("stored", [])) if isinstance(value, dict) else None,
            "link": normalized(links.get(task_id), apikley_task_id),
            "mapped_length": lengths.get(task_id) if task_id not in fields else fields[task_id],
            "asset_events": by_task.get(task_id, []),
            "callbacks": callbacks[task_id],
            "outcome_lines": [normalized(line, apikley_task_id) for line in OUTCOME_LINE.findall(log)],
            "ended_in_triggerer": "ending the task from the triggerer" in log,
            "deferred": "DEFERRED" in log or ".log.trigger." in logs.get(f"{task_id}:files", ""),
        }
        events += Counter({task_id: len(by_task.get(task_id, []))})
    return seen


def normalized(value: Any, apikley_task_id: str | None) -> Any:
    """``value`` with what differs from case to case replaced: the Apikley id, URLs and folders."""
    if value is None:
        return None
    text = json.dumps(value, sort_keys=True)
    if apikley_task_id:
        text = text.replace(apikley_task_id, "<id>")
    text = re.sub(r"https?://[^\"]*", "<url>", text)
    text = re.sub(r"file://[^\"; ,]*?/([^/\"; ,]+)\"", r'<folder>/\1"', text)
    text = re.sub(r"file://\S*/([^/\s\";,]+\.(?:png|jpg|webp))", r"<folder>/\1", text)
    text = re.sub(r"\"/[^\"]*/([^/\"]+\.(?:png|jpg|webp))\"", r'"<folder>/\1"', text)  # a path, as lineage names files
    return json.loads(text) if text.startswith(("{", "[", '"')) else text


def hashes(stored: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    """Each stored file's name, size and sha256, read back from disk."""
    found = []
    for item in stored:
        path = Path(item["uri"].removeprefix("file://"))
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == item["sha256"] and len(data) == item["size"], item
        found.append((path.name, item["size"], item["sha256"]))
    return found


def task_logs(deployment: AirflowDeployment, dag_id: str, run_id: str) -> dict[str, str]:
    """Each task's logs, the worker's and the triggerer's, as one text; ``<task>:files`` lists their names."""
    logs: dict[str, str] = {}
    for path in sorted((deployment.airflow_home / "logs").glob(f"dag_id={dag_id}/run_id={run_id}/task_id=*/**/*.log*")):
        task_id = next(part for part in path.parts if part.startswith("task_id=")).removeprefix("task_id=")
        logs[task_id] = logs.get(task_id, "") + path.read_text()
        logs[f"{task_id}:files"] = logs.get(f"{task_id}:files", "") + path.name + "\n"
    return logs


def cli_log_lines(path: Path) -> dict[str, str]:
    """``airflow dags test``'s output, split by task: it runs one task at a time, and says when each ends."""
    logs: dict[str, str] = {}
    pending = ""
    for line in path.read_text(errors="replace").splitlines():
        pending += line + "\n"
        if match := re.search(r"\[DAG TEST\] end task task_id=(\w+)", line):
            logs[match[1]] = logs.get(match[1], "") + pending
            pending = ""
    return logs
