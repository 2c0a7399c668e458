from __future__ import annotations

import json

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
    from airflow_provider_qwen.links import callback_url

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org")
    assert callback_url() == "https://airflow.example.org/apikley/callback"


def test_a_callback_url_naming_a_connection_and_asset_carries_a_token_of_that_connection(monkeypatch):
    from airflow_provider_qwen.api_server.signing import route_token
    from airflow_provider_qwen.links import callback_url

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org")
    monkeypatch.setenv(
        "AIRFLOW_CONN_APIKLEY_PROD",
        json.dumps({"conn_type": "apikley", "password": "k", "extra": {"webhook_secret": "prod-key"}}),
    )
    token = route_token("prod-key", "apikley_prod", "s3://edits/done")
    assert callback_url("s3://edits/done", "apikley_prod") == (
        f"https://airflow.example.org/apikley/callback?conn_id=apikley_prod&asset=s3%3A%2F%2Fedits%2Fdone&token={token}"
    )
    assert token != route_token("prod-key", "apikley_prod", "s3://edits/other")
    assert token != route_token("another-key", "apikley_prod", "s3://edits/done")
