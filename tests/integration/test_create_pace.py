"""The create pace on the provider's api-server app: evenly spaced slots, one at a time, for signed requests only."""

from __future__ import annotations

import json
import threading
import time
import uuid
from itertools import pairwise
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from airflow_provider_qwen.api_server.app import create_app
from airflow_provider_qwen.api_server.create_pace import MAX_PACE_BYTES, RESERVE_SLOT_PATH
from airflow_provider_qwen.api_server.create_pace_ledger import (
    SLOT_MEMORY_SECONDS,
    paces,
    reserve_slot,
    slot_spacing,
    slots,
)
from airflow_provider_qwen.api_server.signing import request_signature
from tests.conftest import API_KEY

pytestmark = pytest.mark.integration

#: The connection's create rate in these tests: a slot every 0.525 s.
CREATES, WINDOW = 4, 2.0
SPACING = slot_spacing(CREATES, WINDOW)
#: Reservations sent at once by the concurrency tests.
CONCURRENT = 20


@pytest.fixture
def client(airflow_db):
    return TestClient(create_app())


@pytest.fixture
def conn_id(monkeypatch) -> str:
    """A connection of its own for each test, so paces never meet, at :data:`CREATES` per :data:`WINDOW` s."""
    conn_id = f"apikley_pace_{uuid.uuid4().hex[:12]}"
    extra = {"creates_per_window": CREATES, "window_seconds": WINDOW}
    connection = {"conn_type": "apikley", "host": "http://apikley.test", "password": API_KEY, "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
    return conn_id


def post(client, fields=None, key=API_KEY, timestamp=None, signature=None, raw=None, path=RESERVE_SLOT_PATH):
    body = raw if raw is not None else json.dumps(fields).encode()
    stamp = str(int(time.time())) if timestamp is None else timestamp
    headers = {"Content-Type": "application/json", "X-Apikley-Timestamp": stamp}
    headers["X-Apikley-Signature"] = signature or request_signature(key, path, stamp, body)
    return client.post(RESERVE_SLOT_PATH, content=body, headers=headers)


def request(conn_id: str, request_id: str | None = None) -> dict:
    return {"conn_id": conn_id, "request_id": request_id or uuid.uuid4().hex}


def next_slot_at(conn_id: str) -> float | None:
    """When the connection's next slot opens, or ``None`` when it never took one."""
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.scalar(select(paces.c.next_slot_at).where(paces.c.conn_id == conn_id))


def concurrently(count: int, reserve) -> list:
    """Run ``reserve(index)`` in ``count`` threads started together; return what each returned."""
    results: list = [None] * count
    start = threading.Barrier(count)

    def run(index: int) -> None:
        start.wait()
        results[index] = reserve(index)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def assert_evenly_spaced(slot_times: list[float], spacing: float) -> None:
    ordered = sorted(slot_times)
    assert len(set(ordered)) == len(ordered), "two requests got the same slot"
    gaps = [later - earlier for earlier, later in pairwise(ordered)]
    assert gaps == pytest.approx([spacing] * len(gaps), abs=1e-6)


def test_concurrent_reservations_get_distinct_evenly_spaced_slots(airflow_db, conn_id):
    before = time.time()
    slot_times = concurrently(CONCURRENT, lambda index: reserve_slot(conn_id, uuid.uuid4().hex, SPACING).at)
    assert_evenly_spaced(slot_times, SPACING)
    assert before <= min(slot_times) <= time.time()  # an idle pace hands out its first slot at once
    assert next_slot_at(conn_id) == pytest.approx(max(slot_times) + SPACING)


def test_concurrent_requests_to_the_endpoint_are_told_to_wait_one_spacing_more_each(client, conn_id):
    answers = concurrently(CONCURRENT, lambda index: post(client, request(conn_id)))
    assert [answer.status_code for answer in answers] == [200] * CONCURRENT
    assert {answer.json()["spacing_seconds"] for answer in answers} == {SPACING}  # from the connection's extras
    waits = sorted(answer.json()["wait_seconds"] for answer in answers)
    assert waits[0] < SPACING
    # each wait is measured as its answer leaves: a spacing after the one before, less the time between the answers
    gaps = [later - earlier for earlier, later in pairwise(waits)]
    assert all(0 < gap <= SPACING + 1e-3 for gap in gaps), gaps
    assert (CONCURRENT - 1) * SPACING - 3 < waits[-1] <= (CONCURRENT - 1) * SPACING


def test_a_request_sent_again_gets_its_first_slot_and_moves_the_pace_no_further(client, conn_id):
    repeated = request(conn_id)
    first = post(client, repeated)
    pace_after_first = next_slot_at(conn_id)
    again = post(client, repeated)  # its answer lost, or a replay of a captured request
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["wait_seconds"] <= first.json()["wait_seconds"]
    assert next_slot_at(conn_id) == pace_after_first
    assert post(client, request(conn_id)).json()["wait_seconds"] > 0  # a new request takes the next slot


def test_two_connections_keep_paces_of_their_own(airflow_db, conn_id):
    other = f"{conn_id}_other"
    mine = [reserve_slot(conn_id, uuid.uuid4().hex, SPACING).at for _ in range(3)]
    theirs = reserve_slot(other, uuid.uuid4().hex, SPACING).at
    assert theirs < mine[-1]  # the other connection's first slot is now, not after these
    assert_evenly_spaced(mine, SPACING)


def test_a_slot_is_forgotten_once_stale_when_its_connection_takes_another(airflow_db, conn_id, monkeypatch):
    from airflow.utils.session import create_session

    from airflow_provider_qwen.api_server import create_pace_ledger

    old = uuid.uuid4().hex
    reserve_slot(conn_id, old, SPACING)
    later = time.time() + SLOT_MEMORY_SECONDS + 1
    monkeypatch.setattr(create_pace_ledger, "time", type("Clock", (), {"time": staticmethod(lambda: later)}))
    reserve_slot(conn_id, uuid.uuid4().hex, SPACING)
    with create_session() as session:
        kept = set(session.scalars(select(slots.c.request_id).where(slots.c.conn_id == conn_id)))
    assert old not in kept and len(kept) == 1


ATTACKS = [
    ("unsigned", 401),
    ("wrong key", 401),
    ("stale", 401),
    ("from the future", 401),
    ("another connection's key", 401),
    ("body changed after signing", 401),
    ("a budget endpoint's signature", 401),
    ("no conn_id", 401),
    ("a connection of another type", 401),
    ("oversized", 413),
    ("not json", 400),
    ("NaN", 400),
    ("Infinity", 400),
    ("not an object", 400),
    ("an unknown field", 422),
    ("a request_id of the wrong shape", 422),
    ("a request_id that is a number", 422),
]


@pytest.mark.parametrize(("how", "status"), ATTACKS, ids=[how for how, _ in ATTACKS])
def test_refused_requests_take_no_slot(client, conn_id, how, status, monkeypatch):
    fields = request(conn_id)
    body = json.dumps(fields).encode()
    stamp = str(int(time.time()))
    if how == "unsigned":
        response = client.post(RESERVE_SLOT_PATH, content=body, headers={"Content-Type": "application/json"})
    elif how == "wrong key":
        response = post(client, fields, key="sk-someone-else")
    elif how == "stale":
        response = post(client, fields, timestamp=str(int(time.time()) - 3600))
    elif how == "from the future":
        response = post(client, fields, timestamp=str(int(time.time()) + 3600))
    elif how == "another connection's key":
        # a key that opens another connection does not take this one's slots
        monkeypatch.setenv(
            "AIRFLOW_CONN_APIKLEY_OTHER",
            json.dumps({"conn_type": "apikley", "host": "http://apikley.test", "password": "sk-other-key"}),
        )
        response = post(client, fields, key="sk-other-key")
    elif how == "body changed after signing":
        signature = request_signature(API_KEY, RESERVE_SLOT_PATH, stamp, body)
        changed = json.dumps({**fields, "request_id": uuid.uuid4().hex}).encode()
        response = post(client, timestamp=stamp, signature=signature, raw=changed)
    elif how == "a budget endpoint's signature":
        signature = request_signature(API_KEY, "/budgets/reserve", stamp, body)
        response = post(client, timestamp=stamp, signature=signature, raw=body)
    elif how == "no conn_id":
        response = post(client, {"request_id": fields["request_id"]})
    elif how == "a connection of another type":
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "http", "password": API_KEY}))
        response = post(client, fields)
    elif how == "oversized":
        response = post(client, {**fields, "pad": "x" * MAX_PACE_BYTES})
    elif how == "not json":
        response = post(client, raw=b"\xff not json")
    elif how in ("NaN", "Infinity"):  # Python's json writes and reads them; the pace takes neither
        response = post(client, raw=json.dumps({**fields, "request_id": float(how.lower())}).encode())
    elif how == "not an object":
        response = post(client, raw=b"[1, 2]")
    elif how == "an unknown field":
        response = post(client, {**fields, "spacing_seconds": 0})
    elif how == "a request_id of the wrong shape":
        response = post(client, {**fields, "request_id": "../" + "A" * 29})
    else:
        response = post(client, {**fields, "request_id": 12345})
    assert response.status_code == status
    assert "sk-" not in response.text
    assert next_slot_at(conn_id) is None  # no slot was taken: the pace was never even made


def test_the_field_a_signed_request_breaks_is_named(client, conn_id):
    response = post(client, {**request(conn_id), "request_id": "not-hex"})
    assert response.json() == {"detail": "request_id='not-hex': must be 32 lowercase hex digits"}
    response = post(client, {**request(conn_id), "spacing_seconds": 0, "count": 9})
    assert (
        response.json()["detail"]
        == "unknown fields ['count', 'spacing_seconds']: the body takes conn_id, request_id only"
    )


def test_refusals_are_logged_without_the_key_at_most_once_a_minute_per_kind(client, conn_id, caplog):
    for _ in range(3):
        post(client, request(conn_id), key="sk-someone-else")
    refusals = [
        record.getMessage() for record in caplog.records if "create pace request refused" in record.getMessage()
    ]
    assert refusals == [f"Apikley create pace request refused: bad signature for connection {conn_id!r}"]
    assert "sk-" not in caplog.text


def test_a_database_that_cannot_be_used_answers_503(client, conn_id, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from airflow_provider_qwen.api_server import create_pace_ledger

    def broken(conn_id: str) -> None:
        raise OperationalError("SELECT", {}, Exception("no such table: apikley_create_pace"))

    monkeypatch.setattr(create_pace_ledger, "_ensure_pace", broken)
    response = post(client, request(conn_id))
    assert response.status_code == 503
    assert response.json() == {"detail": "the create pace cannot be used right now"}


def test_concurrent_reservations_on_postgresql_get_distinct_evenly_spaced_slots(tmp_path: Path, monkeypatch):
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from airflow import settings

    from tests.system.postgres import PostgresCluster, postgres_bin_dir

    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (scripts/install-system-test-deps.sh installs it)")
    with PostgresCluster(tmp_path / "logs") as postgres:
        engine = create_engine(postgres.sqlalchemy_url, pool_size=CONCURRENT, max_overflow=0)
        try:
            paces.metadata.create_all(engine, tables=[paces, slots])
            # the ledger opens its sessions through Airflow's: point them at this database
            monkeypatch.setattr(settings, "NonScopedSession", sessionmaker(bind=engine, expire_on_commit=False))
            conn_id = "apikley_default"
            slot_times = concurrently(CONCURRENT, lambda index: reserve_slot(conn_id, uuid.uuid4().hex, SPACING).at)
            assert_evenly_spaced(slot_times, SPACING)
            again = concurrently(CONCURRENT, lambda index: reserve_slot(conn_id, uuid.uuid4().hex, SPACING).at)
            assert_evenly_spaced(slot_times + again, SPACING)  # the second burst queues behind the first
        finally:
            engine.dispose()
