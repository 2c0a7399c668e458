"""Waits that end on Apikley's callback: the receiver, the held request on the api-server app, and the triggers."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from airflow_provider_qwen.api_server.app import create_app
from airflow_provider_qwen.api_server.awaited import AWAIT_PATH, MAX_AWAITED_TASKS, MAX_HOLD_SECONDS
from airflow_provider_qwen.api_server.deliveries import delivered_tasks, keep_delivery
from airflow_provider_qwen.api_server.signing import request_signature
from airflow_provider_qwen.models import TaskRecord
from airflow_provider_qwen.triggers.apikley import ApikleyTaskTrigger
from airflow_provider_qwen.triggers.batch import ApikleyBatchTrigger
from tests.conftest import API_KEY, submit_edit
from tests.integration.test_api_server_app import ASSET_URI, WEBHOOK_KEY, declare_asset

pytestmark = pytest.mark.integration

OTHER_KEY = "sk-other-LEAKCANARY-9876543210"


@pytest.fixture
def callbacks(apikley, airflow_db, provider_app_url, monkeypatch):
    """
    Apikley calling back, signed, to the provider's receiver on loopback; the default asset declared.

    :return: the callback URL to create tasks with.
    """
    from airflow.utils.session import create_session

    connection = json.loads(apikley.airflow_connection())
    connection["extra"].update(webhook_secret=WEBHOOK_KEY)
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", json.dumps(connection))
    other = {**connection, "password": OTHER_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_OTHER_APIKLEY", json.dumps(other))
    monkeypatch.setenv("AIRFLOW__APIKLEY__CALLBACK_FALLBACK_SECONDS", "30")
    apikley.configure(callback_key=WEBHOOK_KEY, latency=(0.2, 0.3, 0.4), jitter=0.0)
    declare_asset(ASSET_URI)
    with create_session() as session:
        session.execute(delete(delivered_tasks))
    return f"{provider_app_url}/apikley/callback"


def called_back(image_url: str, callback_url: str) -> str:
    """Create an edit of ``image_url`` that Apikley calls back about; return its task id."""
    from airflow_provider_qwen.hooks.apikley import ApikleyHook

    return ApikleyHook().create_task("qwen/image-to-image", {"prompt": "sepia", "image_url": image_url}, callback_url)


def run_trigger(trigger) -> list:
    async def collect():
        return [event async for event in trigger.run()]

    return asyncio.run(collect())


def status_queries(apikley) -> int:
    return len(apikley.seen("recordInfo"))


def test_a_wait_ends_on_the_callback_with_no_status_query_of_its_own(apikley, callbacks, source_image_url):
    task_id = called_back(source_image_url, callbacks)
    trigger = ApikleyTaskTrigger(task_id, submitted_at=time.time(), awaits_callback=True)
    (event,) = run_trigger(trigger)
    ended_at = time.time()
    assert (event.payload["status"], event.payload["apikley_task_id"]) == ("success", task_id)
    assert event.payload["result_urls"] == apikley.state.tasks[task_id].result_urls
    assert status_queries(apikley) == 1  # the receiver's one re-read; the trigger asked Apikley nothing
    complete_time = apikley.state.tasks[task_id].record(time.time())["completeTime"] / 1000
    assert ended_at - complete_time < 1.0, "the wait ended long after the edit, as if it had polled"


def test_a_lost_callback_still_ends_the_wait_by_the_slow_fallback(apikley, callbacks, source_image_url, monkeypatch):
    monkeypatch.setenv("AIRFLOW__APIKLEY__CALLBACK_FALLBACK_SECONDS", "2")
    apikley.configure(callback_drop=1.0)
    task_id = called_back(source_image_url, callbacks)
    started = time.time()
    (event,) = run_trigger(ApikleyTaskTrigger(task_id, submitted_at=started, awaits_callback=True))
    assert event.payload["status"] == "success"
    assert apikley.stats()["api_codes"]["callback dropped"] == 1
    assert status_queries(apikley) == 1  # the fallback's single query, after 2 s
    assert 1.8 <= time.time() - started < 6


def test_many_waits_in_one_triggerer_end_on_their_callbacks(apikley, callbacks, source_image_url, monkeypatch):
    from airflow_provider_qwen import callback_waits

    asked: list[int] = []
    ask = callback_waits.DeliveryWatch._ask

    async def counted(self, task_ids):
        asked.append(len(task_ids))
        return await ask(self, task_ids)

    monkeypatch.setattr(callback_waits.DeliveryWatch, "_ask", counted)
    task_ids = [called_back(source_image_url, callbacks) for _ in range(8)]

    async def events_of(trigger):
        return [event async for event in trigger.run()]

    async def all_of_them():
        triggers = [ApikleyTaskTrigger(task_id, submitted_at=time.time(), awaits_callback=True) for task_id in task_ids]
        return await asyncio.gather(*(events_of(trigger) for trigger in triggers))

    ended = [event.payload for (event,) in asyncio.run(all_of_them())]
    assert [(payload["status"], payload["apikley_task_id"]) for payload in ended] == [
        ("success", task_id) for task_id in task_ids
    ]
    assert status_queries(apikley) == len(task_ids)  # one re-read each, by the receiver
    assert max(asked) > 1, "the waits did not share a request"
    assert len(asked) <= 2 * len(task_ids), f"{len(asked)} requests to the api-server for {len(task_ids)} waits"


def test_a_batch_waits_for_its_items_callbacks(apikley, callbacks, source_image_url):
    task_ids = [called_back(source_image_url, callbacks) for _ in range(4)]
    trigger = ApikleyBatchTrigger([[task_id, time.time()] for task_id in task_ids], awaits_callback=True)
    (event,) = run_trigger(trigger)
    assert [task["status"] for task in event.payload["tasks"]] == ["success"] * 4
    assert [task["apikley_task_id"] for task in event.payload["tasks"]] == task_ids
    assert status_queries(apikley) == len(task_ids)


def test_a_batch_of_hundreds_reads_their_deliveries_from_an_answer_that_comes_in_many_chunks(apikley, callbacks):
    task_ids = [f"{number:032x}" for number in range(400)]  # unknown to Apikley: a status query would fail
    padded = {"resultUrls": [f"https://results.example.org/{'x' * 500}.png"]}  # about 700 bytes a record
    for task_id in task_ids:
        record = TaskRecord.model_validate({"taskId": task_id, "state": "success", "resultJson": padded})
        keep_delivery("apikley_default", task_id, record.model_dump_json())

    trigger = ApikleyBatchTrigger([[task_id, time.time()] for task_id in task_ids], awaits_callback=True)
    (event,) = run_trigger(trigger)

    assert [task["status"] for task in event.payload["tasks"]] == ["success"] * 400
    assert status_queries(apikley) == 0


def test_a_wait_polls_at_its_usual_cadence_when_the_api_server_cannot_be_asked(
    apikley, callbacks, source_image_url, monkeypatch
):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    task_ids = [submit_edit(source_image_url) for _ in range(3)]
    started = time.time()
    (event,) = run_trigger(
        ApikleyTaskTrigger(task_ids[0], submitted_at=started, poll_interval=0.2, awaits_callback=True)
    )
    assert event.payload["status"] == "success"
    (batch,) = run_trigger(
        ApikleyBatchTrigger([[task_id, started] for task_id in task_ids], poll_interval=0.2, awaits_callback=True)
    )
    assert [task["status"] for task in batch.payload["tasks"]] == ["success"] * 3
    # not the 30 s fallback: both went back to their usual cadence once the api-server could not be asked
    assert time.time() - started < 8


# ---- the endpoint, as anyone on the network reaches it ----------------------------------------------


@pytest.fixture
def client(callbacks):
    return TestClient(create_app())


def ask(client, fields: dict, key: str = API_KEY, path: str = AWAIT_PATH, timestamp: float | None = None, **headers):
    body = json.dumps(fields).encode()
    stamp = str(int(time.time() if timestamp is None else timestamp))
    signed = {"X-Apikley-Timestamp": stamp, "X-Apikley-Signature": request_signature(key, path, stamp, body)}
    return client.post(AWAIT_PATH, content=body, headers={"Content-Type": "application/json", **signed, **headers})


def kept(task_id: str, conn_id: str = "apikley_default") -> None:
    record = TaskRecord.model_validate({"taskId": task_id, "state": "success", "resultJson": {"resultUrls": []}})
    keep_delivery(conn_id, task_id, record.model_dump_json())


TASK_A, TASK_B = "a" * 32, "b" * 32


def test_a_delivered_task_is_answered_at_once_and_only_to_its_connections_key(client):
    kept(TASK_A)
    kept(TASK_B, conn_id="other_apikley")
    answer = ask(client, {"conn_id": "apikley_default", "apikley_task_ids": [TASK_A, TASK_B], "hold_seconds": 5})
    assert answer.status_code == 200
    assert list(answer.json()["delivered"]) == [TASK_A]  # B was delivered through another connection
    assert TaskRecord.model_validate_json(answer.json()["delivered"][TASK_A]).task_id == TASK_A
    theirs = {"conn_id": "other_apikley", "apikley_task_ids": [TASK_B], "hold_seconds": 0}
    assert ask(client, theirs).status_code == 401  # our key does not read another connection's deliveries
    assert list(ask(client, theirs, key=OTHER_KEY).json()["delivered"]) == [TASK_B]


def test_a_held_request_is_answered_as_soon_as_the_task_is_delivered(client):
    import threading

    threading.Timer(0.5, kept, args=(TASK_A,)).start()
    started = time.time()
    answer = ask(client, {"conn_id": "apikley_default", "apikley_task_ids": [TASK_A], "hold_seconds": 10})
    assert list(answer.json()["delivered"]) == [TASK_A]
    assert 0.4 < time.time() - started < 1.5


@pytest.mark.parametrize(
    ("how", "change"),
    [
        ("unsigned", {"X-Apikley-Signature": ""}),
        ("wrong key", {"key": "sk-not-the-key"}),
        ("stale", {"timestamp": time.time() - 3600}),
        ("signed for another endpoint", {"path": "/budgets/reserve"}),
    ],
)
def test_requests_not_signed_by_the_connections_key_are_refused(client, how, change):
    kept(TASK_A)
    headers = {name: value for name, value in change.items() if name.startswith("X-")}
    options = {name: value for name, value in change.items() if not name.startswith("X-")}
    fields = {"conn_id": "apikley_default", "apikley_task_ids": [TASK_A], "hold_seconds": 0}
    answer = ask(client, fields, **options, **headers)
    assert (answer.status_code, answer.content) == (401, b"")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"apikley_task_ids": []}, "apikley_task_ids=[]: must be a list of 1 to 500 Apikley task ids"),
        ({"apikley_task_ids": ["../../etc"]}, "apikley_task_ids[0]='../../etc': must be a list"),
        ({"apikley_task_ids": [TASK_A] * (MAX_AWAITED_TASKS + 1)}, "must be a list of 1 to 500"),
        ({"hold_seconds": MAX_HOLD_SECONDS + 1}, "hold_seconds=31.0: must be a number of seconds from 0 to 30"),
        ({"hold_seconds": float("nan")}, "hold_seconds=nan"),
    ],
)
def test_a_signed_request_with_a_bad_field_is_refused_naming_it(client, fields, message):
    answer = ask(client, {"conn_id": "apikley_default", "apikley_task_ids": [TASK_A], "hold_seconds": 0, **fields})
    assert answer.status_code == 422
    assert message in answer.json()["detail"]


def test_an_oversized_body_is_refused_before_it_is_read(client):
    fields = {"conn_id": "apikley_default", "apikley_task_ids": [TASK_A], "hold_seconds": 0, "pad": "x" * 200_000}
    assert ask(client, fields).status_code == 413


def test_with_no_dag_on_the_default_asset_a_delivery_ends_the_wait_and_is_taken_once(
    apikley, callbacks, source_image_url
):
    from airflow.models.asset import AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:  # no DAG uses apikley://qwen/image-to-image
        session.execute(delete(AssetModel).where(AssetModel.uri == ASSET_URI))
    task_id = called_back(source_image_url, callbacks)
    (event,) = run_trigger(ApikleyTaskTrigger(task_id, submitted_at=time.time(), awaits_callback=True))
    assert event.payload["status"] == "success"
    deadline = time.time() + 10
    while apikley.stats()["api_codes"].get("callback taken", 0) < 1:
        assert time.time() < deadline, apikley.stats()
        time.sleep(0.05)
    time.sleep(0.5)
    # taken at the first delivery: Apikley does not send it again, so the receiver re-read it once
    assert (apikley.stats()["api_codes"]["callback taken"], status_queries(apikley)) == (1, 1)
