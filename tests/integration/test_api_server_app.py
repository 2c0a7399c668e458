"""The provider's api-server app (callbacks, task pages) on a real Airflow database, Apikley played by the emulator."""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from airflow_provider_qwen.api_server.app import create_app as create_provider_app
from airflow_provider_qwen.api_server.deliveries import accepted_signatures, recorded_tasks
from airflow_provider_qwen.api_server.signing import callback_signature
from airflow_provider_qwen.emulator.script import ScriptedAnswer, envelope, task_record
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from tests.conftest import API_KEY, submit_edit

pytestmark = pytest.mark.integration

#: A task the emulator never created: a callback about it that got as far as Apikley would be a 404.
TASK_ID = "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e"
MODEL = "qwen/image-to-image"
WEBHOOK_KEY = "whsec-LEAKCANARY-hmac"
#: The deployment's own keys for callback URLs (Apikley never sees them): the current one and its successor.
ROUTE_KEY, NEXT_ROUTE_KEY = "route-LEAKCANARY-" + "r" * 24, "route-LEAKCANARY-" + "s" * 24
ASSET_URI = "apikley://qwen/image-to-image"


def declare_asset(uri: str):
    """``uri`` as Airflow knows it once a DAG declares it, without events; return a reader of its events' extras."""
    from airflow.models.asset import AssetActive, AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        model = session.scalar(select(AssetModel).where(AssetModel.uri == uri))
        if model is None:
            model = AssetModel(name=uri, uri=uri, group="asset")
            session.add(model)
            session.flush()
            session.add(AssetActive.for_asset(model))
        session.execute(delete(AssetEvent).where(AssetEvent.asset_id == model.id))
        asset_id = model.id

    def events() -> list[dict]:
        with create_session() as session:
            return list(session.scalars(select(AssetEvent.extra).where(AssetEvent.asset_id == asset_id)))

    return events


@pytest.fixture
def asset(airflow_db):
    """The default asset, as Airflow knows it once a DAG declares it; nothing delivered is remembered yet."""
    from airflow.utils.session import create_session

    events = declare_asset(ASSET_URI)
    with create_session() as session:
        session.execute(delete(accepted_signatures))
        session.execute(delete(recorded_tasks))
    return events


@pytest.fixture
def signed_connection(apikley, monkeypatch):
    """``apikley_default`` on the emulator, with the webhook key Apikley signs callbacks with and a route key."""
    connection = json.loads(apikley.airflow_connection())
    connection["extra"].update(webhook_secret=WEBHOOK_KEY, route_keys=[ROUTE_KEY])
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", json.dumps(connection))


@pytest.fixture
def client():
    return TestClient(create_provider_app())


def finished(apikley, task_id: str) -> str:
    """``task_id``, once the emulator has ended it."""
    apikley.wait_until_ended(task_id)
    return task_id


@pytest.fixture
def finished_task(apikley, source_image_url) -> str:
    """A real edit the emulator has made; made at once (no latency), as the test waits for nothing but it."""
    apikley.configure(latency=(0.0, 0.0, 0.0))
    return finished(apikley, submit_edit(source_image_url))


def callback_body(task_id: str = TASK_ID, state: str = "success") -> dict:
    """A callback as Apikley sends it, claiming that ``task_id`` is in ``state``."""
    return {"code": 200 if state == "success" else 501, "msg": "success", "data": task_record(task_id, state)}


def route(asset_uri: str | None = None, conn_id: str | None = None) -> str:
    """The receiver's path with the query that ``callback_url`` signs for ``asset_uri`` and ``conn_id``."""
    from airflow_provider_qwen.api_server.urls import callback_url

    url = callback_url(asset_uri, conn_id)
    return "/callback" + url[url.index("?") :]


def signed(task_id: str = TASK_ID, at: float | None = None, key: str = WEBHOOK_KEY) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    return {"X-Webhook-Timestamp": timestamp, "X-Webhook-Signature": callback_signature(key, task_id, timestamp)}


def test_a_signed_callback_records_one_asset_event_with_the_results(
    apikley, asset, signed_connection, client, finished_task
):
    response = client.post("/callback", json=callback_body(finished_task), headers=signed(finished_task))
    assert response.status_code == 200
    assert response.json() == {"apikley_task_id": finished_task, "recorded": True, "state": "success"}
    (extra,) = asset()
    assert extra["apikley_task_id"] == finished_task
    assert extra["state"] == "success"
    assert extra["result_urls"] == apikley.state.tasks[finished_task].result_urls
    assert extra["result_urls"]
    assert len(apikley.seen("recordInfo")) == 1  # the state was read from Apikley, not taken from the body


def test_each_finished_edit_is_its_own_partition(asset, signed_connection, client, finished_task):
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    if not hasattr(AssetEvent, "partition_key"):
        pytest.skip("asset partitions came with Airflow 3.2")
    assert client.post("/callback", json=callback_body(finished_task), headers=signed(finished_task)).status_code == 200
    with create_session() as session:
        keys = session.scalars(select(AssetEvent.partition_key)).all()
    assert finished_task in keys


def test_listeners_hear_of_a_callbacks_event_once_it_is_committed(
    asset, signed_connection, client, finished_task, monkeypatch
):
    from airflow.assets.manager import asset_manager
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    from airflow_provider_qwen import _compat as compat

    seen_by_listeners: list[int] = []

    def notify_asset_changed(cls, asset):
        with create_session() as session:  # what any other process would read at that moment
            seen_by_listeners.append(len(session.scalars(select(AssetEvent.id)).all()))

    monkeypatch.setattr(type(asset_manager), "notify_asset_changed", classmethod(notify_asset_changed))
    assert client.post("/callback", json=callback_body(finished_task), headers=signed(finished_task)).status_code == 200
    register = asset_manager.register_asset_change
    # Airflow 3.3 takes a callback sink, so listeners are told after the commit; before, inside the transaction
    assert seen_by_listeners == ([1] if compat._takes(register, "callback_sink") else [0])


def test_the_same_task_delivered_twice_records_one_event(asset, signed_connection, client, finished_task):
    first = client.post(
        "/callback", json=callback_body(finished_task), headers=signed(finished_task, at=time.time() - 1)
    )
    headers = signed(finished_task)
    second = client.post("/callback", json=callback_body(finished_task), headers=headers)
    assert (first.json()["recorded"], second.json()["recorded"]) == (True, False)
    assert second.status_code == 200  # taken, so Apikley stops delivering it
    replayed = client.post("/callback", json=callback_body(finished_task), headers=headers)
    assert (replayed.status_code, replayed.content) == (401, b"")  # a taken delivery is spent too
    assert len(asset()) == 1


def test_a_delivery_that_finds_the_task_claimed_meanwhile_is_taken_and_spent(
    asset, signed_connection, client, finished_task, monkeypatch
):
    from airflow_provider_qwen.api_server import asset_events

    body = callback_body(finished_task)
    assert client.post("/callback", json=body, headers=signed(finished_task, at=time.time() - 1)).json()["recorded"]
    task_claimed = asset_events.task_claimed

    def missed_once(*args):  # as when another delivery claims the task between this one's look and its claim
        monkeypatch.setattr(asset_events, "task_claimed", task_claimed)
        return False

    monkeypatch.setattr(asset_events, "task_claimed", missed_once)
    headers = signed(finished_task)
    second = client.post("/callback", json=body, headers=headers)
    assert (second.status_code, second.json()["recorded"]) == (200, False)
    replayed = client.post("/callback", json=body, headers=headers)
    assert (replayed.status_code, replayed.content) == (401, b"")
    assert len(asset()) == 1


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="unsigned"),
        pytest.param(signed(key="not-the-key"), id="forged"),
        pytest.param(signed(task_id="another-task"), id="signed-for-another-task"),
        pytest.param(signed(at=time.time() - 3600), id="stale"),
        pytest.param(signed(at=time.time() + 3600), id="from-the-future"),
        pytest.param({"X-Webhook-Timestamp": "yesterday", "X-Webhook-Signature": "x"}, id="garbled"),
    ],
)
def test_a_callback_that_is_not_signed_right_is_refused_without_detail_or_effect(
    apikley, asset, signed_connection, client, headers
):
    response = client.post("/callback", json=callback_body(), headers=headers)
    assert (response.status_code, response.content) == (401, b"")
    assert asset() == []
    assert apikley.seen() == []


def test_a_replayed_callback_is_refused(asset, signed_connection, client, finished_task):
    headers = signed(finished_task)
    assert client.post("/callback", json=callback_body(finished_task), headers=headers).status_code == 200
    assert client.post("/callback", json=callback_body(finished_task), headers=headers).status_code == 401
    assert len(asset()) == 1


def test_without_a_webhook_key_unsigned_callbacks_are_refused_by_default(apikley, asset, client):
    response = client.post("/callback", json=callback_body())
    assert (response.status_code, response.content) == (401, b"")
    assert asset() == []
    assert apikley.seen() == []  # not even a status query of the account is spent


def test_a_deployment_may_opt_in_to_unsigned_callbacks_on_the_default_route(asset, client, finished_task, monkeypatch):
    monkeypatch.setenv("AIRFLOW__APIKLEY__ALLOW_UNSIGNED_CALLBACKS", "True")
    response = client.post("/callback", json=callback_body(finished_task))
    assert response.status_code == 200
    assert len(asset()) == 1


def test_an_early_delivery_is_answered_503_and_recorded_once_when_sent_again_after_the_task_ends(
    apikley, asset, signed_connection, client, source_image_url
):
    apikley.configure(latency=(0.0, 0.0, 1.5))  # generating for 1.5 s
    task_id = submit_edit(source_image_url)
    body, headers = json.dumps(callback_body(task_id, "success")).encode(), signed(task_id)
    early = client.post("/callback", content=body, headers=headers)
    assert early.status_code == 503  # the body claims success; Apikley says otherwise
    assert (early.json()["recorded"], early.json()["state"]) == (False, "generating")
    assert "send again" in early.json()["detail"]
    assert asset() == []
    apikley.wait_until_ended(task_id)
    again = client.post("/callback", content=body, headers=headers)  # the same bytes, the same signature
    assert again.status_code == 200, again.text
    assert again.json() == {"apikley_task_id": task_id, "recorded": True, "state": "success"}
    replayed = client.post("/callback", content=body, headers=headers)
    assert (replayed.status_code, replayed.content) == (401, b"")
    (extra,) = asset()
    assert extra["apikley_task_id"] == task_id


LATER_ASSET_URI = "apikley://edits/declared-later"


@pytest.mark.parametrize("fault", ["re-read", "tables", "asset not declared yet"])
def test_a_delivery_that_meets_a_fault_is_recorded_once_when_sent_again(
    apikley, asset, signed_connection, client, finished_task, monkeypatch, fault
):
    from sqlalchemy.exc import OperationalError

    from airflow_provider_qwen.api_server import asset_events
    from airflow_provider_qwen.emulator.script import html_page

    events, path = asset, "/callback"
    if fault == "re-read":
        apikley.script("recordInfo", html_page(502, times=2))  # the first read and its one retry
    elif fault == "tables":
        claim_task = asset_events.claim_task

        def fails_once(*args):
            monkeypatch.setattr(asset_events, "claim_task", claim_task)
            raise OperationalError("INSERT INTO apikley_recorded_task", {}, Exception("database is locked"))

        # after the signature was spent, in the same transaction
        monkeypatch.setattr(asset_events, "claim_task", fails_once)
    else:
        path = route(LATER_ASSET_URI)
    body, headers = json.dumps(callback_body(finished_task)).encode(), signed(finished_task)
    first = client.post(path, content=body, headers=headers)
    assert first.status_code == (404 if fault == "asset not declared yet" else 503), first.text
    if fault == "asset not declared yet":
        events = declare_asset(LATER_ASSET_URI)  # a DAG using it is deployed
    assert events() == []
    again = client.post(path, content=body, headers=headers)
    assert (again.status_code, again.json()["recorded"]) == (200, True)
    replayed = client.post(path, content=body, headers=headers)
    forged = client.post(path, content=body, headers=signed(finished_task, key="not-the-key"))
    assert [(answer.status_code, answer.content) for answer in (replayed, forged)] == [(401, b""), (401, b"")]
    assert len(events()) == 1


def test_the_recording_transaction_refuses_a_replay_the_first_look_missed(asset, signed_connection, finished_task):
    from airflow_provider_qwen.api_server.signing import SignatureChecker

    # as when two copies of one delivery arrive together: both look before either is recorded
    client = TestClient(create_provider_app(SignatureChecker(is_spent=lambda signature: False)))
    body, headers = json.dumps(callback_body(finished_task)).encode(), signed(finished_task)
    assert client.post("/callback", content=body, headers=headers).json()["recorded"] is True
    replayed = client.post("/callback", content=body, headers=headers)
    assert (replayed.status_code, replayed.content) == (401, b"")
    assert len(asset()) == 1


def test_a_signature_from_a_clock_ahead_is_remembered_until_it_is_stale(
    apikley, asset, signed_connection, client, finished_task, source_image_url, monkeypatch
):
    from types import SimpleNamespace

    from airflow_provider_qwen.api_server import signing

    now = time.time()
    body, ahead = json.dumps(callback_body(finished_task)).encode(), signed(finished_task, at=now + 290)  # skew
    assert client.post("/callback", content=body, headers=ahead).json()["recorded"] is True
    another = finished(apikley, submit_edit(source_image_url))
    monkeypatch.setattr(signing, "time", SimpleNamespace(time=lambda: now + 400))  # the first is still fresh
    later = client.post("/callback", json=callback_body(another), headers=signed(another, at=now + 400))
    assert later.json()["recorded"] is True  # spending a signature forgets the stale ones
    replayed = client.post("/callback", content=body, headers=ahead)
    assert (replayed.status_code, replayed.content) == (401, b"")


def test_a_failed_task_is_recorded_with_its_code_and_message(
    apikley, asset, signed_connection, client, source_image_url
):
    apikley.configure(fail_fraction=1.0, latency=(0.0, 0.0, 0.0))
    task_id = finished(apikley, submit_edit(source_image_url))
    assert client.post("/callback", json=callback_body(task_id, "fail"), headers=signed(task_id)).status_code == 200
    (extra,) = asset()
    assert (extra["state"], extra["fail_code"], extra["fail_message"], extra["result_urls"]) == (
        "fail",
        "501",
        apikley.state.tasks[task_id].fail_message,
        [],
    )
    assert extra["fail_message"]


def test_an_asset_no_dag_uses_is_a_clear_404(asset, signed_connection, client, finished_task):
    response = client.post(
        route("s3://nowhere/edits"), json=callback_body(finished_task), headers=signed(finished_task)
    )
    assert response.status_code == 404
    assert "s3://nowhere/edits" in response.json()["detail"]


def test_a_task_apikley_does_not_know_records_nothing(apikley, asset, signed_connection, client):
    assert client.post("/callback", json=callback_body(), headers=signed()).status_code == 404
    assert asset() == []
    assert len(apikley.seen("recordInfo")) == 1  # Apikley was asked, and said "recordInfo is null"


def test_a_body_without_a_task_id_is_a_bad_request(asset, client):
    assert client.post("/callback", json={"code": 200, "data": {}}).status_code == 400
    assert client.post("/callback", content=b"not json").status_code == 400
    assert client.post("/callback", json=callback_body(task_id="x\n[fake log line]")).status_code == 400


def test_no_key_reaches_the_logs_or_the_answers(asset, signed_connection, client, finished_task, caplog):
    caplog.set_level(logging.DEBUG)
    answers = [
        client.post("/callback", json=callback_body(finished_task), headers=signed(finished_task, key="not-the-key")),
        client.post("/callback", json=callback_body(finished_task), headers=signed(finished_task)),
    ]
    text = caplog.text + "".join(answer.text for answer in answers)
    assert "refused" in caplog.text
    assert API_KEY not in text
    assert WEBHOOK_KEY not in text


@pytest.fixture
def api_server(airflow_db):
    """Airflow's own api-server app, with the provider's plugin mounted as a deployment would have it."""
    from airflow.api_fastapi.app import create_app

    with TestClient(create_app()) as client:
        yield client


def admin_token() -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))


@pytest.mark.api_server_app
def test_the_task_page_shows_state_and_results_to_a_logged_in_user(apikley, api_server, finished_task):
    response = api_server.get(
        f"/apikley/connections/apikley_default/tasks/{finished_task}",
        headers={"Authorization": f"Bearer {admin_token()}"},
    )
    assert response.status_code == 200, response.text
    page = response.json()
    results = apikley.state.tasks[finished_task].result_urls
    assert (page["apikley_task_id"], page["state"], page["result_urls"]) == (finished_task, "success", results)
    assert results
    assert API_KEY not in response.text


@pytest.mark.api_server_app
def test_the_task_page_asks_for_a_login(apikley, api_server, finished_task):
    response = api_server.get(f"/apikley/connections/apikley_default/tasks/{finished_task}")
    assert response.status_code in (401, 403)
    assert apikley.seen("recordInfo") == []


@pytest.mark.api_server_app
def test_the_api_server_takes_callbacks_without_asking_for_a_login(asset, signed_connection, api_server, finished_task):
    response = api_server.post("/apikley/callback", json=callback_body(finished_task), headers=signed(finished_task))
    assert response.status_code == 200, response.text
    assert len(asset()) == 1


# ---- what a caller can choose: nothing that costs a secret ---------------------------------------

POSTGRES_PASSWORD = "pg-LEAKCANARY-password"


@pytest.fixture
def foreign_connections(apikley, monkeypatch):
    """
    A Postgres connection with a password, and a second Apikley connection without a webhook key.

    Both point at the emulator, so a request made with either would be seen.
    """
    monkeypatch.setenv(
        "AIRFLOW_CONN_MY_POSTGRES",
        json.dumps({"conn_type": "postgres", "host": apikley.base_url, "password": POSTGRES_PASSWORD}),
    )
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_OTHER", apikley.airflow_connection())


def test_a_callback_naming_another_type_of_connection_sends_nothing_and_looks_like_an_unknown_one(
    apikley, asset, signed_connection, foreign_connections, client
):
    foreign = client.post("/callback?conn_id=my_postgres", json=callback_body(), headers=signed())
    unknown = client.post("/callback?conn_id=no_such_connection", json=callback_body(), headers=signed(at=1))
    assert (foreign.status_code, foreign.content) == (401, b"")
    assert (unknown.status_code, unknown.content) == (401, b"")
    assert apikley.seen() == []  # the Postgres password went nowhere
    assert asset() == []


@pytest.fixture
def lookups(monkeypatch) -> list[str]:
    """The id of every connection the receiver looks up (each may be a secrets-backend call)."""
    looked_up: list[str] = []
    real = ApikleyHook.get_connection

    def counted(conn_id):
        looked_up.append(conn_id)
        return real(conn_id)

    monkeypatch.setattr(ApikleyHook, "get_connection", staticmethod(counted))
    return looked_up


def refusal_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if "refused" in record.getMessage()]


def forge(client, conn_ids) -> set[int]:
    """Send a signed-looking callback naming each of ``conn_ids``; return the statuses answered."""
    path = "/callback?conn_id={}&token=forged"
    return {client.post(path.format(conn_id), json=callback_body()).status_code for conn_id in conn_ids}


def test_forged_callbacks_naming_unlisted_connections_cost_no_lookup_and_one_log_line(
    signed_connection, client, lookups, caplog, monkeypatch
):
    monkeypatch.setenv("AIRFLOW__APIKLEY__CALLBACK_CONNECTIONS", "apikley_team_a, apikley_team_b")
    with caplog.at_level("WARNING", logger="airflow_provider_qwen.api_server.callbacks"):
        assert forge(client, (f"forged_{n}" for n in range(300))) == {401}
    assert lookups == []
    assert refusal_lines(caplog) == [
        "Apikley callback for task 3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e refused: connection 'forged_0' is not in "
        "[apikley] callback_connections"
    ]


def test_forged_callbacks_log_one_line_a_minute_of_each_kind(signed_connection, client, lookups, caplog):
    with caplog.at_level("WARNING", logger="airflow_provider_qwen.api_server.callbacks"):
        assert forge(client, (f"forged_{n}" for n in range(300))) == {401}
    assert len(lookups) == 300  # without [apikley] callback_connections, each well-formed name is looked up
    assert len(refusal_lines(caplog)) == 1


@pytest.mark.parametrize("conn_id", ["a%20b", "x" * 251, "caf%C3%A9", "a%0Ab", "a%00b"])
def test_a_name_not_shaped_like_a_connection_id_is_never_looked_up(signed_connection, client, lookups, conn_id):
    assert forge(client, [conn_id]) == {401}
    assert lookups == []


def test_a_listed_connection_takes_callbacks_and_callback_url_refuses_an_unlisted_one(
    apikley, asset, signed_connection, client, finished_task, monkeypatch
):
    from airflow_provider_qwen.api_server.urls import callback_url
    from airflow_provider_qwen.exceptions import ApikleyConfigurationError

    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_TEAM_A", os.environ["AIRFLOW_CONN_APIKLEY_DEFAULT"])
    monkeypatch.setenv("AIRFLOW__APIKLEY__CALLBACK_CONNECTIONS", "apikley_team_a")
    with pytest.raises(ApikleyConfigurationError, match=r"'apikley_team_b' is not in \[apikley\] callback_connections"):
        callback_url(apikley_conn_id="apikley_team_b")
    body, headers = callback_body(finished_task), signed(finished_task)
    response = client.post(route(conn_id="apikley_team_a"), json=body, headers=headers)
    assert response.status_code == 200 and len(asset()) == 1


def test_a_broken_secrets_backend_is_an_outage_logged_and_answered_503_not_a_refusal(
    apikley, asset, signed_connection, client, monkeypatch, caplog
):
    def backend_down(conn_id):
        raise ConnectionError("secrets backend at vault.internal.test: connection refused")

    monkeypatch.setattr(ApikleyHook, "get_connection", staticmethod(backend_down))
    with caplog.at_level("ERROR", logger="airflow_provider_qwen.api_server.callbacks"):
        response = client.post("/callback", json=callback_body(), headers=signed())
    assert response.status_code == 503 and "send again" in response.json()["detail"]
    assert "vault" not in response.text  # the cause is for the logs only
    (logged,) = [record for record in caplog.records if record.levelname == "ERROR"]
    assert "could not be read" in logged.getMessage() and "vault.internal.test" in logged.exc_text
    assert apikley.seen() == [] and asset() == []


def test_airflow_db_migrate_created_the_receivers_tables_at_their_head_revision(airflow_db):
    from alembic.script import ScriptDirectory
    from sqlalchemy import inspect, text

    from airflow.utils.session import create_session

    from airflow_provider_qwen.api_server.db_manager import ApikleyDBManager

    (head,) = ScriptDirectory(ApikleyDBManager.migration_dir).get_heads()
    with create_session() as session:
        tables = set(inspect(session.get_bind()).get_table_names())
        (revision,) = session.execute(text(f"SELECT version_num FROM {ApikleyDBManager.version_table_name}")).one()
    assert {"apikley_callback_signature", "apikley_recorded_task"} <= tables
    assert revision == head


@pytest.mark.parametrize("table", ["signatures", "recorded tasks"])
def test_missing_tables_are_an_outage_logged_and_answered_503(
    apikley, asset, signed_connection, client, finished_task, monkeypatch, caplog, table
):
    from sqlalchemy import Column, MetaData, String, Table

    from airflow_provider_qwen.api_server import asset_events, deliveries

    never_migrated = Table("apikley_never_migrated", MetaData(), Column("signature_sha256", String(64)))
    if table == "signatures":
        monkeypatch.setattr(deliveries, "accepted_signatures", never_migrated)
    else:
        monkeypatch.setattr(asset_events, "claim_task", lambda session, *ids: session.execute(never_migrated.insert()))
    with caplog.at_level("ERROR", logger="airflow_provider_qwen.api_server.callbacks"):
        response = client.post("/callback", json=callback_body(finished_task), headers=signed(finished_task))
    assert response.status_code == 503 and "send again" in response.json()["detail"]
    (logged,) = [record for record in caplog.records if record.levelname == "ERROR"]
    assert "airflow db migrate" in logged.getMessage()
    assert asset() == []


def test_recorded_tasks_older_than_the_retention_are_forgotten(
    asset, signed_connection, client, finished_task, monkeypatch
):
    from datetime import timedelta

    from airflow.utils.session import create_session

    monkeypatch.setenv("AIRFLOW__APIKLEY__RECORDED_TASK_RETENTION_DAYS", "7")
    now = datetime.now(UTC)
    with create_session() as session:
        for task_id, age in (("recorded-8-days-ago", 8), ("recorded-6-days-ago", 6)):
            session.execute(
                recorded_tasks.insert().values(
                    asset_id=1, apikley_task_id=task_id, recorded_at=now - timedelta(days=age)
                )
            )
    assert client.post("/callback", json=callback_body(finished_task), headers=signed(finished_task)).status_code == 200
    with create_session() as session:
        remembered = set(session.scalars(select(recorded_tasks.c.apikley_task_id)))
    assert remembered == {"recorded-6-days-ago", finished_task}


@pytest.mark.parametrize(
    ("days", "shown"),
    [
        ("-1", "recorded_task_retention_days='-1'"),
        ("0", "recorded_task_retention_days='0'"),
        ("a week", "recorded_task_retention_days (a text, not shown)"),
    ],
)
def test_a_retention_below_one_day_is_logged_as_an_error_and_the_default_used(
    asset, signed_connection, client, finished_task, monkeypatch, caplog, days, shown
):
    monkeypatch.setenv("AIRFLOW__APIKLEY__RECORDED_TASK_RETENTION_DAYS", days)
    body = callback_body(finished_task)
    with caplog.at_level("ERROR", logger="airflow_provider_qwen.api_server.deliveries"):
        first = client.post("/callback", json=body, headers=signed(finished_task, at=time.time() - 1))
        second = client.post("/callback", json=body, headers=signed(finished_task))
    assert [first.json()["recorded"], second.json()["recorded"]] == [True, False]
    assert len(asset()) == 1  # the claim outlived the moment it was made
    message = caplog.records[0].getMessage()
    assert f"[apikley] {shown} is not" in message
    assert "at least 1" in message and "the default, 30" in message


def test_an_unsigned_callback_cannot_sidestep_the_key_by_naming_a_connection_without_one(
    apikley, asset, signed_connection, foreign_connections, client, finished_task, monkeypatch
):
    monkeypatch.setenv("AIRFLOW__APIKLEY__ALLOW_UNSIGNED_CALLBACKS", "True")
    response = client.post("/callback?conn_id=apikley_other", json=callback_body(finished_task))
    assert (response.status_code, response.content) == (401, b"")
    assert apikley.seen("recordInfo") == []
    assert asset() == []


def test_unsigned_callbacks_opted_in_still_cannot_choose_an_asset(asset, client, finished_task, monkeypatch):
    monkeypatch.setenv("AIRFLOW__APIKLEY__ALLOW_UNSIGNED_CALLBACKS", "True")
    response = client.post("/callback", params={"asset": ASSET_URI}, json=callback_body(finished_task))
    assert response.status_code == 401
    assert asset() == []


def test_the_asset_and_connection_in_a_callback_url_are_signed_by_the_deployment(
    asset, signed_connection, client, finished_task
):
    body = callback_body(finished_task)
    signed_route = route(ASSET_URI)
    assert "token=" in signed_route
    tampered = signed_route.replace("qwen%2Fimage-to-image", "qwen%2Fother")
    assert client.post(tampered, json=body, headers=signed(finished_task, at=time.time() - 2)).status_code == 401
    no_token = signed_route[: signed_route.index("&token=")]
    assert client.post(no_token, json=body, headers=signed(finished_task, at=time.time() - 1)).status_code == 401
    assert asset() == []
    assert client.post(signed_route, json=body, headers=signed(finished_task)).status_code == 200
    assert len(asset()) == 1


def test_a_callback_url_naming_an_asset_needs_the_connections_route_key_and_webhook_key():
    from airflow_provider_qwen.api_server.urls import callback_url
    from airflow_provider_qwen.exceptions import ApikleyConfigurationError

    with pytest.raises(ApikleyConfigurationError, match="needs the route_keys and webhook_secret extra"):
        callback_url(ASSET_URI)


def test_apikley_holding_the_webhook_key_cannot_point_a_callback_at_an_asset(
    asset, signed_connection, client, finished_task
):
    from urllib.parse import urlencode

    from airflow_provider_qwen.api_server.signing import route_token

    forged = route_token(WEBHOOK_KEY, "apikley_default", ASSET_URI)  # what the webhook key alone can sign
    path = "/callback?" + urlencode({"asset": ASSET_URI, "token": forged})
    response = client.post(path, json=callback_body(finished_task), headers=signed(finished_task))
    assert (response.status_code, response.content) == (401, b"")
    assert asset() == []


def test_a_rotated_route_key_is_accepted_until_it_is_dropped(apikley, asset, client, finished_task, monkeypatch):
    def connection(route_keys: list[str]) -> None:
        settings = json.loads(apikley.airflow_connection())
        settings["extra"].update(webhook_secret=WEBHOOK_KEY, route_keys=route_keys)
        monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", json.dumps(settings))

    connection([ROUTE_KEY])
    issued_before = route(ASSET_URI)  # a URL a task in flight still holds
    connection([NEXT_ROUTE_KEY, ROUTE_KEY])  # rotation: the new key first, the old one still accepted
    assert route(ASSET_URI) != issued_before
    body = callback_body(finished_task)
    assert client.post(issued_before, json=body, headers=signed(finished_task, at=time.time() - 2)).status_code == 200
    connection([NEXT_ROUTE_KEY])  # the old key dropped
    assert client.post(issued_before, json=body, headers=signed(finished_task, at=time.time() - 1)).status_code == 401
    assert client.post(route(ASSET_URI), json=body, headers=signed(finished_task)).status_code == 200
    assert len(asset()) == 1  # the same task, recorded once


# ---- once, across processes and at the same time -------------------------------------------------


def test_a_replay_is_refused_by_another_api_server_process_or_after_a_restart(asset, signed_connection, finished_task):
    headers = signed(finished_task)
    first_process, second_process = TestClient(create_provider_app()), TestClient(create_provider_app())
    assert first_process.post("/callback", json=callback_body(finished_task), headers=headers).status_code == 200
    assert second_process.post("/callback", json=callback_body(finished_task), headers=headers).status_code == 401
    assert len(asset()) == 1


def test_the_same_delivery_sent_concurrently_records_one_event(asset, signed_connection, finished_task):
    from concurrent.futures import ThreadPoolExecutor

    clients = [TestClient(create_provider_app()) for _ in range(3)]
    body, headers = json.dumps(callback_body(finished_task)).encode(), signed(finished_task)
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda client: client.post("/callback", content=body, headers=headers), clients))
    assert sorted(answer.status_code for answer in answers) == [200, 401, 401]
    assert len(asset()) == 1


def test_concurrent_deliveries_of_one_task_record_one_event(asset, signed_connection, finished_task):
    from concurrent.futures import ThreadPoolExecutor

    clients = [TestClient(create_provider_app()) for _ in range(3)]
    body = callback_body(finished_task)
    now = time.time()
    with ThreadPoolExecutor(3) as pool:  # three signatures (seconds apart), delivered at once
        answers = list(
            pool.map(
                lambda n: clients[n].post("/callback", json=body, headers=signed(finished_task, at=now - n)), range(3)
            )
        )
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert sorted(answer.json()["recorded"] for answer in answers) == [False, False, True]
    assert len(asset()) == 1


# ---- bounded input -------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_refused_from_its_declared_length(apikley, client):
    headers = {"Content-Length": str(64 * 1024 * 1024), "Content-Type": "application/json"}
    response = client.post("/callback", content=b"{}", headers=headers)
    assert response.status_code == 413
    assert apikley.seen() == []


async def test_a_body_without_a_length_is_read_no_further_than_the_limit():
    from starlette.requests import Request

    from airflow_provider_qwen.api_server.callbacks import MAX_CALLBACK_BYTES, BodyTooLarge, read_bounded

    chunks_read = 0

    async def endless_body() -> dict:
        nonlocal chunks_read
        chunks_read += 1
        return {"type": "http.request", "body": b" " * 65536, "more_body": True}

    with pytest.raises(BodyTooLarge):
        await read_bounded(Request({"type": "http", "method": "POST", "headers": []}, endless_body))
    assert chunks_read * 65536 <= MAX_CALLBACK_BYTES + 65536


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 10_000 + b"]" * 10_000, id="nested-10000-deep"),
        pytest.param(b'{"data": {"taskId": "\xff\xfe"}}', id="invalid-utf8"),
        pytest.param('{"data": {"taskId": "abc"}}'.encode("utf-16-le")[:-1], id="truncated-utf16"),
        pytest.param(b'{"data": {"taskId": ["abc"]}}', id="task-id-not-a-string"),
        pytest.param(b'{"data": {"taskId": "../escaped"}}', id="task-id-path"),
    ],
)
def test_pathological_bodies_are_a_bad_request(apikley, client, body):
    response = client.post("/callback", content=body, headers={"Content-Type": "application/json; charset=bogus"})
    assert response.status_code == 400
    assert apikley.seen() == []


# ---- the task page -------------------------------------------------------------------------------


def open_task_page(connection_id: str, task_id: str = TASK_ID):
    """The page's handler, called as the api-server calls it once the user may read the connection."""
    import asyncio

    from fastapi import HTTPException

    from airflow_provider_qwen.api_server.task_page import show_task

    try:
        return 200, asyncio.run(show_task(connection_id, task_id))
    except HTTPException as err:
        return err.status_code, err.detail


def test_the_task_page_serves_only_apikley_connections(apikley, foreign_connections):
    assert open_task_page("my_postgres")[0] == 404
    assert apikley.seen() == []
    assert open_task_page("no_such_connection")[0] == 404  # not a 500


#: What a host that is not Apikley may answer: nothing of it may reach the page.
ADMIN_CONSOLE = ScriptedAnswer(
    b"<html>internal admin console: LEAKCANARY-page</html>", status=500, content_type="text/html", times=None
)


def test_the_task_page_never_echoes_what_the_host_answered(apikley, caplog):
    from airflow_provider_qwen.api_server.task_page import UNREACHABLE_DETAIL

    apikley.script("recordInfo", ADMIN_CONSOLE)
    with caplog.at_level(logging.WARNING, logger="airflow_provider_qwen.api_server.task_page"):
        assert open_task_page("apikley_default") == (502, UNREACHABLE_DETAIL)
    assert "(ApikleyServerError, HTTP 500)" in caplog.text  # the kind of failure is for the log
    assert "LEAKCANARY" not in caplog.text


class NotApikley(http.server.BaseHTTPRequestHandler):
    """A live web service that is not Apikley: a 404 page for every path, as most servers have one."""

    def do_GET(self) -> None:
        page = b"<html><body><h1>404 Not Found</h1><hr>nginx</body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def not_apikley() -> Iterator[str]:
    """The address of a live service that is not Apikley, on 127.0.0.1."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotApikley)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_task_page_answers_one_502_whatever_is_at_the_connections_host(apikley, not_apikley, monkeypatch):
    """Whoever can edit a connection's host learns nothing from the page about what listens there."""
    from airflow_provider_qwen.api_server import task_page
    from tests.system.ports import free_port

    monkeypatch.setattr(task_page, "PAGE_TIMEOUT_SECONDS", 1.0)
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections and never answers
    hosts = {
        "closed port": f"http://127.0.0.1:{free_port()}",
        "live service": f"http://{not_apikley}",
        "TLS error": f"https://{not_apikley}",  # speaks plain HTTP
        "timeout": f"http://127.0.0.1:{silent.getsockname()[1]}",
    }
    answers = {}
    with silent:
        for case, host in hosts.items():
            connection = {"conn_type": "apikley", "host": host, "password": API_KEY}
            monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", json.dumps(connection))
            answers[case] = open_task_page("apikley_default")
    assert answers == dict.fromkeys(hosts, (502, task_page.UNREACHABLE_DETAIL))


def test_the_task_page_refuses_what_is_not_a_task_id(apikley):
    assert open_task_page("apikley_default", "../../etc")[0] == 400
    assert apikley.seen() == []


# ---- the task page in a browser ------------------------------------------------------------------

#: What Chromium sends when it opens a page.
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"}


class Page(HTMLParser):
    """An HTML page as a reader sees it: its text, and each element's attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.texts: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.texts.append(data)

    @property
    def text(self) -> str:
        """The text, each run of white space one space."""
        return " ".join(" ".join(self.texts).split())

    def values(self, tag: str, attribute: str) -> list[str | None]:
        """``attribute`` of each ``tag`` element that has it."""
        return [attrs[attribute] for name, attrs in self.elements if name == tag and attribute in attrs]


def open_as(api_server, accept: dict[str, str], task_id: str, connection_id: str = "apikley_default"):
    """The task page, asked for by a logged-in admin with the ``Accept`` header ``accept``."""
    headers = {"Authorization": f"Bearer {admin_token()}", **accept}
    return api_server.get(f"/apikley/connections/{connection_id}/tasks/{task_id}", headers=headers)


def varies_on_accept(response) -> bool:
    """Whether caches must keep the answer apart by ``Accept`` (the api-server adds ``Accept-Encoding``)."""
    return "accept" in {name.strip().lower() for name in response.headers.get("vary", "").split(",")}


def utc(milliseconds: int) -> str:
    return datetime.fromtimestamp(milliseconds / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@pytest.mark.api_server_app
def test_a_browser_gets_a_page_with_the_state_links_times_and_credits(
    apikley, api_server, finished_task, source_image_url
):
    from airflow_provider_qwen.hooks.apikley import ApikleyHook

    response = open_as(api_server, BROWSER, finished_task)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "img-src" not in policy and "script-src" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert varies_on_accept(response)
    record = ApikleyHook().get_task(finished_task)
    page = Page(response.text)
    assert page.values("a", "href") == [source_image_url, *record.result_urls]
    assert record.result_urls
    assert page.values("img", "src") == []  # nothing is fetched until the user clicks
    assert f"Apikley task {finished_task} success" in page.text
    assert f"Created {utc(record.create_time)} Completed {utc(record.complete_time)}" in page.text
    assert f"Duration {(record.complete_time - record.create_time) / 1000:.1f} s" in page.text
    assert f"Credits consumed {record.credits_consumed:g}" in page.text
    assert "Failed" not in page.text
    assert API_KEY not in response.text
    # errors stay JSON for a browser, as the api-server's own 401 and 403 are
    unknown = open_as(api_server, BROWSER, TASK_ID)
    assert (unknown.status_code, unknown.headers["content-type"]) == (404, "application/json")


@pytest.mark.api_server_app
def test_a_failed_task_page_shows_the_code_and_message(apikley, api_server, source_image_url):
    apikley.configure(fail_fraction=1.0, latency=(0.0, 0.0, 0.0))
    task_id = finished(apikley, submit_edit(source_image_url))
    response = open_as(api_server, BROWSER, task_id)
    assert response.status_code == 200, response.text
    page = Page(response.text)
    message = apikley.state.tasks[task_id].fail_message
    assert f"Apikley task {task_id} fail" in page.text
    assert f"Failed (code 501) {message}" in page.text
    assert page.values("a", "href") == [source_image_url]  # no result to show
    assert "Result None" in page.text


@pytest.mark.api_server_app
def test_json_clients_get_the_task_as_json_as_before(apikley, api_server, finished_task):
    from airflow_provider_qwen.hooks.apikley import ApikleyHook

    expected = ApikleyHook().get_task(finished_task).describe()
    assert set(expected) == {
        "apikley_task_id", "model", "state", "result_urls", "fail_code", "fail_message", "input",
        "create_time", "complete_time", "credits_consumed",
    }  # fmt: skip
    for accept in ("application/json", "*/*", "", "text/html;q=0.5, application/json", "text/html, application/json"):
        response = open_as(api_server, {"Accept": accept}, finished_task)
        assert response.status_code == 200, (accept, response.text)
        assert response.headers["content-type"] == "application/json", accept
        assert response.json() == expected, accept
        assert varies_on_accept(response), accept  # a cache must not answer a browser with it


#: What a host that is not Apikley, or a prompt someone wrote, may put in a task record.
HOSTILE_INPUT = {
    "prompt": "<script>alert('prompt')</script>",
    "image_url": "javascript:alert('source')",
}
HOSTILE_RESULTS = [
    "javascript:alert('result')",
    "data:text/html,<script>alert('data')</script>",
    'https://images.example.org/ok.png" onerror="alert(1)',
    "https://images.example.org/fine.png",
]


@pytest.mark.api_server_app
def test_what_apikley_sends_is_escaped_and_only_http_urls_are_linked(apikley, api_server):
    record = task_record(TASK_ID, "fail", fail_code="<b>501</b>", fail_message="<script>alert('fail')</script>")
    record["param"] = json.dumps({"model": MODEL, "input": HOSTILE_INPUT})
    record["resultJson"] = json.dumps({"resultUrls": HOSTILE_RESULTS})
    record["model"] = "<img src=x onerror=alert('model')>"
    apikley.script("recordInfo", envelope(record))
    response = open_as(api_server, BROWSER, TASK_ID)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "content-security-policy" in response.headers
    page = Page(response.text)
    assert [tag for tag, _ in page.elements if tag in ("script", "iframe", "object", "embed", "base")] == []
    assert all(not name.startswith("on") for _, attrs in page.elements for name in attrs)
    assert page.values("a", "href") == HOSTILE_RESULTS[2:]  # the http(s) ones, the quote escaped
    assert "Result 1" in page.text and "Result 2" in page.text and "Result 3" not in page.text
    assert "alert('result')" not in response.text and "alert('data')" not in response.text  # dropped as results
    for text in ("<script>alert('prompt')</script>", "<script>alert('fail')</script>", "javascript:alert('source')"):
        assert text in page.text  # shown as text
    assert "<b>501</b>" in page.text
    assert "<img src=x onerror=alert('model')>" in page.text
    assert "<script" not in response.text.lower()


#: Result URLs on hosts that downloads refuse (link-local metadata, a private network), beside one they allow.
REFUSED_RESULTS = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://10.0.0.5/admin/pixel.png",
    "https://images.example.org/fine.png",
]


@pytest.mark.api_server_app
def test_the_task_page_loads_no_image_from_any_host(apikley, api_server):
    record = task_record(TASK_ID, "success", result_urls=REFUSED_RESULTS)
    record["param"] = json.dumps({"model": MODEL, "input": {"prompt": "p", "image_url": "http://10.0.0.5/in.png"}})
    apikley.script("recordInfo", envelope(record))
    response = open_as(api_server, BROWSER, TASK_ID)
    assert response.status_code == 200, response.text
    assert "<img" not in response.text.lower()
    assert "img-src" not in response.headers["content-security-policy"]
    assert "default-src 'none'" in response.headers["content-security-policy"]
    links = [attrs for tag, attrs in Page(response.text).elements if tag == "a"]
    assert [link["href"] for link in links] == ["http://10.0.0.5/in.png", *REFUSED_RESULTS]
    assert all("noreferrer" in (link["rel"] or "") for link in links)
