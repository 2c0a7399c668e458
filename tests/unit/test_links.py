from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from airflow_provider_qwen.links import APIKLEY_TASK_ID_XCOM_KEY, ApikleyTaskLink
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from airflow_provider_qwen.sensors.apikley import ApikleyTaskSensor

TASK_ID = "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e"
IMAGE_URL = "https://files.example.org/in/shoe.png"


@pytest.fixture
def xcom(monkeypatch):
    """XCom values by key, as ``XCom.get_value`` would find them for the task instance."""
    from airflow_provider_qwen import links

    values: dict[str, str] = {}
    monkeypatch.setattr(links.XCom, "get_value", lambda *, ti_key, key: values.get(key))
    return values


@pytest.mark.parametrize(
    "operator",
    [
        QwenImageToImageOperator(task_id="edit", prompt="sepia", image_url=IMAGE_URL, apikley_conn_id="my apikley"),
        ApikleyTaskSensor(task_id="wait", apikley_task_id=TASK_ID, apikley_conn_id="my apikley"),
    ],
    ids=["operator", "sensor"],
)
def test_the_link_opens_the_task_page_once_the_id_is_known(operator, xcom, monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org/")
    (link,) = [link for link in operator.operator_extra_links if isinstance(link, ApikleyTaskLink)]
    assert link.name == "Apikley task"
    assert link.get_link(operator, ti_key=None) == ""
    xcom[APIKLEY_TASK_ID_XCOM_KEY] = TASK_ID
    assert link.get_link(operator, ti_key=None) == (
        f"https://airflow.example.org/apikley/connections/my%20apikley/tasks/{TASK_ID}"
    )


def test_the_callback_url_points_at_the_receiver_on_the_api_server(monkeypatch):
    from airflow_provider_qwen.api_server.urls import callback_url

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org")
    assert callback_url() == "https://airflow.example.org/apikley/callback"


def test_the_callback_url_is_still_importable_from_links_for_one_release():
    from airflow_provider_qwen import links
    from airflow_provider_qwen.api_server import urls

    assert links.callback_url is urls.callback_url and links.task_page_url is urls.task_page_url


#: Route keys of the tests' connections: the newest first, then the one being rotated out.
NEW_ROUTE_KEY, OLD_ROUTE_KEY = "route-key-2026-12-" + "n" * 20, "route-key-2026-06-" + "o" * 20


def test_a_callback_url_naming_a_connection_and_asset_carries_a_token_of_its_newest_route_key(monkeypatch):
    from airflow_provider_qwen.api_server.signing import route_token
    from airflow_provider_qwen.api_server.urls import callback_url

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org")
    extra = {"webhook_secret": "prod-key", "route_keys": [NEW_ROUTE_KEY, OLD_ROUTE_KEY]}
    monkeypatch.setenv(
        "AIRFLOW_CONN_APIKLEY_PROD", json.dumps({"conn_type": "apikley", "password": "k", "extra": extra})
    )
    token = route_token(NEW_ROUTE_KEY, "apikley_prod", "s3://edits/done")
    assert callback_url("s3://edits/done", "apikley_prod") == (
        f"https://airflow.example.org/apikley/callback?conn_id=apikley_prod&asset=s3%3A%2F%2Fedits%2Fdone&token={token}"
    )
    assert token != route_token(NEW_ROUTE_KEY, "apikley_prod", "s3://edits/other")
    assert token != route_token("prod-key", "apikley_prod", "s3://edits/done")  # not the key Apikley holds


@pytest.mark.parametrize("route_keys", ["short", ["x" * 40, 7], {"key": "x" * 40}])
def test_route_keys_that_could_be_guessed_or_are_not_keys_are_refused(monkeypatch, route_keys):
    from airflow_provider_qwen.exceptions import ApikleyConfigurationError
    from airflow_provider_qwen.hooks.apikley import ApikleyHook

    extra = {"webhook_secret": "prod-key", "route_keys": route_keys}
    monkeypatch.setenv(
        "AIRFLOW_CONN_APIKLEY_PROD", json.dumps({"conn_type": "apikley", "password": "k", "extra": extra})
    )
    with pytest.raises(ApikleyConfigurationError, match="route_keys: must be a key, or a list of keys newest first"):
        ApikleyHook("apikley_prod").settings  # noqa: B018 (reading it is the check)


# ---- the link in a task process, where XCom reads go through the worker's supervisor ---------------


def sdk_http():
    """The HTTP library Airflow's execution API client is built on: httpx, or its fork httpx2 from Airflow 3.4."""
    import airflow.sdk.api.client as client

    return getattr(client, "httpx2", None) or client.httpx


class ExecutionApi:
    """The XCom routes of Airflow's execution API: values by (dag, run, task, key, map index)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str, str, str, int], str] = {}
        self.requests: list[str] = []

    def __call__(self, request):
        _, _, dag_id, run_id, task_id, key = request.url.path.split("/", 5)  # /xcoms/<dag>/<run>/<task>/<key>
        self.requests.append(request.method)
        rows = {index: value for (*row, index), value in self.values.items() if row == [dag_id, run_id, task_id, key]}
        if request.method == "HEAD":  # how many map indexes have one; never a 404
            return sdk_http().Response(200, headers={"Content-Range": f"map_indexes {len(rows)}"})
        map_index = int(request.url.params.get("map_index", -1))
        if map_index not in rows:
            message = (
                f"XCom with {key=} {map_index=} not found for task {task_id!r} in DAG run {run_id!r} of {dag_id!r}"
            )
            return sdk_http().Response(404, json={"detail": {"reason": "not_found", "message": message}})
        return sdk_http().Response(200, json={"key": key, "value": rows[map_index]})


class Supervisor:
    """A task process's supervisor: it answers the task's XCom requests as Airflow's does, with Airflow's client."""

    def __init__(self, api: ExecutionApi) -> None:
        from airflow.sdk.api.client import Client

        self.client = Client(base_url="http://execution-api.test/", token="", transport=sdk_http().MockTransport(api))

    def send(self, msg):
        from airflow.sdk.execution_time.comms import GetXCom, GetXComCount, XComResult

        if isinstance(msg, GetXComCount):
            return self.client.xcoms.head(msg.dag_id, msg.run_id, msg.task_id, msg.key)
        if isinstance(msg, GetXCom):
            xcom = self.client.xcoms.get(
                msg.dag_id, msg.run_id, msg.task_id, msg.key, msg.map_index, msg.include_prior_dates
            )
            return XComResult.from_xcom_response(xcom)
        raise AssertionError(f"the link asked the supervisor for {msg!r}")


@pytest.fixture
def execution_api(monkeypatch) -> Iterator[ExecutionApi]:
    """The execution API behind a supervisor, as the link meets them when a task instance ends."""
    from airflow.sdk.execution_time import task_runner

    api = ExecutionApi()
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", Supervisor(api), raising=False)
    yield api


def ti_key(map_index: int = -1, task_id: str = "edit"):
    from airflow.models.taskinstancekey import TaskInstanceKey

    return TaskInstanceKey("catalog", task_id, "manual__1", try_number=1, map_index=map_index)


def complaints(caplog, captured: list[dict]) -> list[str]:
    """Warnings and errors logged, through the standard library or Airflow's structlog."""
    lines = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    loud = ("warning", "error", "critical")
    return lines + [
        str(event) for event in captured if event.get("log_level") in loud or "XCom not found" in str(event)
    ]


@pytest.mark.parametrize("map_index", [-1, 3], ids=["unmapped", "mapped"])
def test_without_a_task_id_the_link_is_empty_and_logs_nothing(execution_api, caplog, map_index):
    """An input error ends the task before any Apikley task exists: no second error in its log."""
    from structlog.testing import capture_logs

    caplog.set_level(logging.DEBUG)
    operator = QwenImageToImageOperator(task_id="edit", prompt="sepia", image_url=IMAGE_URL)
    with capture_logs() as captured:
        link = ApikleyTaskLink().get_link(operator, ti_key=ti_key(map_index))
    assert link == ""
    assert complaints(caplog, captured) == []
    assert "GET" not in execution_api.requests


@pytest.mark.parametrize("map_index", [-1, 3], ids=["unmapped", "mapped"])
def test_in_a_task_process_the_link_reads_the_pushed_id(execution_api, monkeypatch, map_index):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org")
    operator = QwenImageToImageOperator(task_id="edit", prompt="sepia", image_url=IMAGE_URL)
    execution_api.values["catalog", "manual__1", "edit", APIKLEY_TASK_ID_XCOM_KEY, map_index] = TASK_ID
    execution_api.values["catalog", "manual__1", "edit", APIKLEY_TASK_ID_XCOM_KEY, 7] = "another-task"
    assert ApikleyTaskLink().get_link(operator, ti_key=ti_key(map_index)) == (
        f"https://airflow.example.org/apikley/connections/apikley_default/tasks/{TASK_ID}"
    )


@pytest.mark.parametrize(
    ("task", "bad"),
    [
        (QwenImageToImageOperator(task_id="edit", prompt="sepia", image_url="file:///etc/passwd"), "image_url="),
        (ApikleyTaskSensor(task_id="wait", apikley_task_id="not an id!"), "apikley_task_id="),
    ],
    ids=["operator", "sensor"],
)
def test_a_mapped_instance_that_failed_early_asks_nothing_though_its_siblings_pushed_ids(
    execution_api, caplog, task, bad
):
    """One bad item of a catalog: the siblings' ids exist, this instance's does not, and its log stays clean."""
    from unittest import mock

    from structlog.testing import capture_logs

    from airflow_provider_qwen.exceptions import ApikleyInputError

    execution_api.values["catalog", "manual__1", task.task_id, APIKLEY_TASK_ID_XCOM_KEY, 0] = TASK_ID
    with pytest.raises(ApikleyInputError, match=bad):
        task.execute({"ti": mock.Mock()})
    caplog.set_level(logging.DEBUG)
    with capture_logs() as captured:
        assert ApikleyTaskLink().get_link(task, ti_key=ti_key(3, task.task_id)) == ""
    assert complaints(caplog, captured) == []
    assert "GET" not in execution_api.requests
