"""
The provider in the Airflow UI, in headless Chromium: the connection form, its "Test" button, and
the "Apikley task" extra link on the demo DAG's edits.

Screenshots of each step go to ``tests/system/screenshots/`` (git-ignored); a step fails on any
error banner. With ``QWEN_UPDATE_SCREENSHOTS=1`` the task page's screenshot also replaces the
documentation's ``docs/task-page.png``.
"""

from __future__ import annotations

import pytest
from packaging.version import Version
from playwright.sync_api import expect

import airflow

from tests.system.browser import CHROMIUM, UiPage, chromium_page
from tests.system.deployment import AirflowDeployment, EmulatorProcess

pytestmark = [
    pytest.mark.system,
    pytest.mark.slow,
]

DEMO_DAG_ID = "qwen_catalog_edit"
DEMO_TIMEOUT_SECONDS = 300.0

AIRFLOW_LINE = Version(airflow.__version__).release[:2]
#: Airflow's connection form shows a provider's extras as fields of their own (its ``conn-fields``)
#: from 3.2; 3.1 offers only its "Extra Fields JSON" editor, as docs/connection.md says.
FORM_HAS_EXTRA_FIELDS = AIRFLOW_LINE >= (3, 2)
#: It renders an extra of format "password" as a password input from 3.3, as a text input before
#: (where the saved value still comes back masked, which the test checks).
UI_MASKS_SECRET_EXTRAS = AIRFLOW_LINE >= (3, 3)


@pytest.fixture(scope="module", autouse=True)
def chromium_is_installed() -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: scripts/install-browser-test-deps.sh installs it"


def add_apikley_connection(
    ui: UiPage, conn_id: str, emulator: EmulatorProcess, api_key: str, webhook_secret: str | None = None
) -> None:
    """Fill the connection form for an Apikley connection to the emulator and save it."""
    ui.open("/connections")
    ui.page.get_by_role("button", name="Add Connection").click()
    form = ui.page.get_by_role("dialog")
    form.locator("input[name=connection_id]").fill(conn_id)
    ui.choose_connection_type("Apikley")
    form.locator("input[name=host]").fill("http://127.0.0.1")
    form.locator("input[name=port]").fill(str(emulator.port))
    form.locator("input[name=password]").fill(api_key)
    if webhook_secret is not None:
        form.get_by_text("Extra Fields", exact=True).click()
        form.locator("input[name=element_webhook_secret]").fill(webhook_secret)
    ui.step(f"{conn_id}-form")
    form.get_by_role("button", name="Save").click()
    ui.row(conn_id).wait_for()


def press_test_button(ui: UiPage, conn_id: str) -> tuple[dict, str]:
    """Press the row's "Test" button; return the API's answer and the notice the UI shows."""
    button = ui.row(conn_id).get_by_role("button", name="Test Connection")
    with ui.page.expect_response(lambda response: response.url.endswith("/connections/test")) as answer:
        button.click()
    notice = ui.page.locator("[data-scope=toast][data-part=root]").filter(has_text="Test Connection")
    expect(notice).to_be_visible()
    return answer.value.json(), notice.inner_text()


def test_the_connection_form_labels_tests_and_masks_an_apikley_connection(deployment, emulator):
    with chromium_page(deployment.api_url) as ui:
        ui.open("/connections")
        ui.page.get_by_role("button", name="Add Connection").click()
        form = ui.page.get_by_role("dialog")
        ui.choose_connection_type("Apikley")
        for label in ("Base URL", "API key", "Port"):
            expect(form.get_by_text(label, exact=True), f"no field labelled {label!r}").to_be_visible()
        assert form.locator("input[name=host]").get_attribute("placeholder") == "https://api.apikley.ru"
        assert form.locator("input[name=password]").get_attribute("type") == "password"
        ui.step("connection-form")
        if FORM_HAS_EXTRA_FIELDS:
            form.get_by_text("Extra Fields", exact=True).click()
            for label in ("Upload base URL", "Request timeout (seconds)", "Webhook HMAC key"):
                expect(form.get_by_text(label, exact=True), f"no field labelled {label!r}").to_be_visible()
            webhook_key = form.locator("input[name=element_webhook_secret]")
            expect(webhook_key).to_be_visible()
            if UI_MASKS_SECRET_EXTRAS:
                assert webhook_key.get_attribute("type") == "password"
            assert form.locator("input[name=element_timeout]").input_value() == "60"
            ui.step("connection-form-extras")
        else:
            expect(form.get_by_text("Extra Fields JSON", exact=True)).to_be_visible()
            assert form.get_by_text("Webhook HMAC key", exact=True).count() == 0
        ui.page.keyboard.press("Escape")

        webhook_secret = "whsec-shown-once-" + "k" * 24 if FORM_HAS_EXTRA_FIELDS else None
        add_apikley_connection(ui, "apikley_ui", emulator, emulator.api_key, webhook_secret)
        answer, notice = press_test_button(ui, "apikley_ui")
        assert answer["status"] is True, answer
        assert f"Connected to http://127.0.0.1:{emulator.port}" in notice
        ui.step("connection-tested")

        ui.row("apikley_ui").get_by_role("button", name="Edit Connection").click()
        form = ui.page.get_by_role("dialog")
        assert form.locator("input[name=password]").input_value() == "***"
        if webhook_secret is not None:
            form.get_by_text("Extra Fields", exact=True).click()
            expect(form.locator("input[name=element_webhook_secret]")).to_have_value("***")
            assert webhook_secret not in ui.page.content()
        assert emulator.api_key not in ui.page.content()
        ui.step("connection-viewed-again")


def test_a_wrong_key_fails_the_test_with_a_readable_message(deployment, emulator):
    with chromium_page(deployment.api_url) as ui:
        add_apikley_connection(ui, "apikley_ui_wrong_key", emulator, "sk-not-the-key")
        answer, notice = press_test_button(ui, "apikley_ui_wrong_key")
        assert answer["status"] is False
        assert "401" in notice and "API key is missing or invalid" in notice, notice
        assert "sk-not-the-key" not in notice
        ui.step("connection-wrong-key", expected_error="Apikley answered code 401")


def demo_run(deployment: AirflowDeployment, output_uri: str) -> str:
    run_id = deployment.trigger(DEMO_DAG_ID, {"output_uri": output_uri})
    assert deployment.wait_for_run(DEMO_DAG_ID, run_id, timeout=DEMO_TIMEOUT_SECONDS) == "success"
    return run_id


def test_the_demo_dags_edits_link_to_their_apikley_task(deployment, emulator, system_workdir, tmp_path):
    run_id = demo_run(deployment, f"file://{system_workdir}/catalog")
    ((apikley_task_id,),) = deployment.sql(
        "SELECT value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = 'edit' AND map_index = 0 "
        "AND key = 'apikley_task_id'",
        (DEMO_DAG_ID, run_id),
    )
    with chromium_page(deployment.api_url) as ui:
        # The UI lists a task instance's extra links on its Details tab.
        ui.open(f"/dags/{DEMO_DAG_ID}/runs/{run_id}/tasks/edit/mapped/0/details")
        link = ui.page.get_by_role("link", name="Apikley task")
        link.wait_for()
        href = link.get_attribute("href")
        assert href == f"{deployment.api_url}/apikley/connections/apikley_default/tasks/{apikley_task_id}"
        ui.step("demo-edit-with-apikley-link")

        # A client asking for JSON, with the same login, gets the task as data
        task = ui.page.request.get(href, headers={"Accept": "application/json"}).json()
        assert (task["apikley_task_id"], task["state"]) == (apikley_task_id, "success")
        assert task["result_urls"]
        # and the browser gets the page: the state, and links to the source and result images, none loaded
        answer = ui.open(href)
        assert "default-src 'none'" in answer.headers["content-security-policy"]
        expect(ui.page.locator(".state")).to_have_text("success")
        expect(ui.page.get_by_role("heading", level=1)).to_contain_text(apikley_task_id)
        assert ui.page.locator("img").count() == 0
        linked = ui.page.locator(".pictures a").evaluate_all("links => links.map(a => a.href)")
        assert linked == [task["input"]["image_url"], *task["result_urls"]]
        ui.step("apikley-task-page")
        ui.docs_screenshot("task-page.png", tmp_path, "main")
