"""
Review of edits in the Airflow UI, in headless Chromium, on the deployment.

``dags/qwen_system_review.py`` maps three edits, then a review of each. Under the review task's
Required Actions a reviewer approves the first, asks for a re-edit of the second with a new prompt and
strength (paid once more, then approved in its second round) and rejects the third with a note. The
next task must get exactly the approved and the re-edited results. The time from the last click on
"Approve" to that task starting is printed in the measurements. ``qwen_system_review_timeout`` has
one edit approved through Airflow's REST API (``PATCH .../hitlDetails``, what the UI sends) and one
left unanswered past its ``response_timeout``.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from urllib.parse import quote

import pytest
import requests
from playwright.sync_api import expect

from tests.system.browser import CHROMIUM, UiPage, chromium_page
from tests.system.conftest import MEASUREMENTS_SECTION
from tests.system.deployment import AirflowDeployment, EmulatorProcess
from tests.system.waiting import wait_for

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.newest_line]

DAG_ID = "qwen_system_review"
RUN_TIMEOUT_SECONDS = 300.0
NEW_PROMPT, NEW_STRENGTH = "studio photo, darker", 0.4


@pytest.fixture(scope="module", autouse=True)
def chromium_is_installed() -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: scripts/install-browser-test-deps.sh installs it"


def ti_path(run_id: str, map_index: int, dag_id: str = DAG_ID) -> str:
    return f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/review/{map_index}"


def xcom(
    deployment: AirflowDeployment, run_id: str, task_id: str, key: str, map_index: int = -1, dag_id: str = DAG_ID
) -> Any:
    path = f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/xcomEntries/{key}"
    return deployment.rest.request("GET", path, params={"map_index": map_index, "deserialize": True})["value"]


def asking(deployment: AirflowDeployment, run_id: str, map_index: int, dag_id: str = DAG_ID) -> dict[str, Any]:
    """The review's question once it waits for an answer (Airflow's ``hitlDetails``)."""

    def question() -> dict[str, Any] | None:
        try:
            detail = deployment.rest.request("GET", f"{ti_path(run_id, map_index, dag_id)}/hitlDetails")
        except requests.HTTPError:
            return None  # not asked yet
        return None if detail["response_received"] else detail

    return wait_for(question, timeout=RUN_TIMEOUT_SECONDS, what=f"review {map_index} to ask", interval=1.0)


def parked(deployment: AirflowDeployment, run_id: str, map_index: int, times: int, dag_id: str = DAG_ID) -> None:
    """
    Wait until the scheduler has read the executor's report on each of the ``times`` runs that set the review waiting.

    An answer that resumes the task before that fails it (Airflow 3.1-3.3's race, docs/review.md, "Where
    a review waits"): a person takes longer than that to answer, this test would not.
    """
    report = (
        f"Received executor event with state success for task instance TaskInstanceKey(dag_id='{dag_id}', "
        f"task_id='review', run_id='{run_id}', try_number=1, map_index={map_index})"
    )
    log = deployment.log_dir / "scheduler.log"
    wait_for(
        lambda: log.read_text(errors="replace").count(report) >= times,
        timeout=120,
        what=f"the scheduler to read review {map_index}'s report",
        interval=0.5,
    )


def answer(ui: UiPage, run_id: str, map_index: int, option: str, **fields: object) -> tuple[dict[str, Any], float]:
    """
    Open the item's Required Actions, fill the form, press ``option``.

    :return: Airflow's record of the answer, and when the button was pressed (epoch seconds).
    """
    ui.open(f"/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/review/mapped/{map_index}/required_actions")
    button = ui.page.get_by_role("button", name=option, exact=True)
    button.wait_for()
    for name, value in fields.items():
        ui.page.locator(f"input[name=element_{name}]").fill(str(value))
    ui.step(f"review-{map_index}-{option}")
    with ui.page.expect_response(lambda r: r.url.endswith("/hitlDetails") and r.request.method == "PATCH") as sent:
        clicked = time.time()
        button.click()
    assert sent.value.status == 200, sent.value.text()
    return sent.value.json(), clicked


def started(deployment: AirflowDeployment, run_id: str, task_id: str) -> datetime:
    def start() -> str | None:
        (ti,) = [ti for ti in deployment.task_instances(DAG_ID, run_id) if ti["task_id"] == task_id]
        return ti["start_date"]

    return datetime.fromisoformat(wait_for(start, timeout=120, what=f"{task_id} to start", interval=0.2))


def test_a_reviewer_approves_re_edits_and_rejects_edits_in_the_ui(
    deployment: AirflowDeployment, emulator: EmulatorProcess, measurement
):
    credits_before = emulator.stats()["credits"]
    run_id = deployment.trigger(DAG_ID)
    questions = [asking(deployment, run_id, map_index) for map_index in range(3)]
    edits = [xcom(deployment, run_id, "edit", "return_value", map_index) for map_index in range(3)]

    with chromium_page(deployment.api_url) as ui:
        # The reviewer sees the source and the result side by side, and the Apikley task's page.
        ui.open(f"/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/review/mapped/0/required_actions")
        ui.page.get_by_role("button", name="Approve", exact=True).wait_for()
        pictures = ui.page.locator("img[src^='http://127.0.0.1']")
        expect(pictures).to_have_count(2, timeout=30_000)
        ui.step("review-0-question")
        assert pictures.evaluate_all("images => images.map(i => i.src)") == [
            edits[0]["input"]["image_url"],
            *edits[0]["result_urls"],
        ]
        page_link = ui.page.get_by_role("link", name=edits[0]["apikley_task_id"])
        assert page_link.get_attribute("href") == (
            f"{deployment.api_url}/apikley/connections/apikley_default/tasks/{edits[0]['apikley_task_id']}"
        )
        assert questions[0]["options"] == ["Approve", "Reject", "Re-edit"]
        assert questions[0]["defaults"] == ["Reject"]  # what a timeout decides

        for map_index in range(3):
            parked(deployment, run_id, map_index, times=1)
        rejected, _ = answer(ui, run_id, 2, "Reject", note="blurry edges")
        re_edit, _ = answer(ui, run_id, 1, "Re-edit", prompt=NEW_PROMPT, strength=NEW_STRENGTH, note="too light")
        approved, _ = answer(ui, run_id, 0, "Approve")

        # The re-edit is submitted and paid for, then the same item is asked about again.
        wait_for(
            lambda: xcom(deployment, run_id, "review", "apikley_task_id", 1) != edits[1]["apikley_task_id"],
            timeout=RUN_TIMEOUT_SECONDS,
            what="the re-edit to be submitted",
            interval=1.0,
        )
        asking(deployment, run_id, 1)
        parked(deployment, run_id, 1, times=2)
        approved_again, clicked = answer(ui, run_id, 1, "Approve")
        ui.step("review-approved-again")

    collect_started = started(deployment, run_id, "collect")
    assert deployment.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT_SECONDS) == "success"
    seconds = collect_started.timestamp() - clicked

    # Exactly the approved edit and the re-edit reach the next task, in the edits' shape.
    collected = xcom(deployment, run_id, "collect", "return_value")
    re_edited = xcom(deployment, run_id, "review", "return_value", 1)
    assert collected == [edits[0], re_edited]
    assert re_edited.keys() == edits[1].keys()
    assert re_edited["input"] == {**edits[1]["input"], "prompt": NEW_PROMPT, "strength": NEW_STRENGTH}

    # One more createTask, for the re-edit, and its credits: four paid in all.
    sources = {edit["input"]["image_url"] for edit in edits}
    paid = [task for task in emulator.tasks() if task["request"]["input"].get("image_url") in sources]
    assert len(paid) == 4, paid
    assert paid[-1]["request"]["input"] == re_edited["input"]
    assert credits_before - emulator.stats()["credits"] == 4

    # Who answered what is recorded with each item; the rejection is listed with its note.
    outcomes = [xcom(deployment, run_id, "review", "review", map_index) for map_index in range(3)]
    responders = [record["responded_by"]["name"] for record in (approved, re_edit, rejected, approved_again)]
    assert all(responders), responders
    assert [(o["outcome"], o["responded_by"], o["rounds"]) for o in outcomes] == [
        ("approved", approved["responded_by"]["name"], 1),
        ("approved", approved_again["responded_by"]["name"], 2),
        ("rejected", rejected["responded_by"]["name"], 1),
    ]
    assert outcomes[1]["history"][0]["note"] == "too light"
    assert outcomes[1]["history"][0]["responded_by"] == re_edit["responded_by"]["name"]
    assert xcom(deployment, run_id, "review", "rejected", 2) == outcomes[2]
    assert outcomes[2]["note"] == "blurry edges"

    print(f"\nlast 'Approve' clicked to the next task starting: {seconds:.1f} s")
    measurement(
        MEASUREMENTS_SECTION,
        f"review in the UI: last 'Approve' clicked to the next task starting: {seconds:.1f} s "
        f"(responders recorded: {sorted(set(responders))})",
    )


TIMEOUT_DAG_ID = "qwen_system_review_timeout"


def test_an_answer_through_the_rest_api_counts_and_no_answer_in_time_rejects(deployment: AirflowDeployment):
    run_id = deployment.trigger(TIMEOUT_DAG_ID)
    for map_index in range(2):
        asking(deployment, run_id, map_index, TIMEOUT_DAG_ID)
    edits = [xcom(deployment, run_id, "edit", "return_value", map_index, TIMEOUT_DAG_ID) for map_index in range(2)]
    parked(deployment, run_id, 0, times=1, dag_id=TIMEOUT_DAG_ID)
    # What the UI sends, as any client of Airflow's REST API may.
    answered = deployment.rest.request(
        "PATCH",
        f"{ti_path(run_id, 0, TIMEOUT_DAG_ID)}/hitlDetails",
        json={"chosen_options": ["Approve"], "params_input": {"prompt": None, "strength": None, "note": "by API"}},
    )
    assert deployment.wait_for_run(TIMEOUT_DAG_ID, run_id, timeout=RUN_TIMEOUT_SECONDS) == "success"

    assert xcom(deployment, run_id, "collect", "return_value", dag_id=TIMEOUT_DAG_ID) == [edits[0]]
    approved, timed_out = (xcom(deployment, run_id, "review", "review", i, TIMEOUT_DAG_ID) for i in range(2))
    assert (approved["outcome"], approved["responded_by"], approved["note"]) == (
        "approved",
        answered["responded_by"]["name"],
        "by API",
    )
    assert (timed_out["outcome"], timed_out["responded_by"]) == ("rejected", None)
    assert timed_out["note"] == "no response within response_timeout: rejected, the default outcome"
    assert xcom(deployment, run_id, "review", "rejected", 1, TIMEOUT_DAG_ID) == timed_out
    detail = deployment.rest.request("GET", f"{ti_path(run_id, 1, TIMEOUT_DAG_ID)}/hitlDetails")
    assert (detail["chosen_options"], detail["responded_by_user"]) == (["Reject"], None)
