"""The run budgets' ledger on the provider's api-server app, on a real Airflow database."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from airflow_provider_qwen.api_server.app import create_app
from airflow_provider_qwen.api_server.signing import request_signature
from tests.conftest import API_KEY

pytestmark = pytest.mark.integration

#: A model of its own for each test module run: what Apikley last charged for one is learned per model.
MODEL = f"test/budget-{uuid.uuid4().hex[:12]}"
TASK_IDS = [f"{index:032x}" for index in range(1, 40)]


@pytest.fixture
def client(airflow_db):
    return TestClient(create_app())


@pytest.fixture
def run_id() -> str:
    """A run of its own for each test, so budgets never meet."""
    return f"manual__{uuid.uuid4().hex}"


def post(client, path, fields, key=API_KEY, timestamp=None, signature=None, raw=None):
    body = raw if raw is not None else json.dumps(fields).encode()
    stamp = str(int(time.time())) if timestamp is None else timestamp
    headers = {"Content-Type": "application/json", "X-Apikley-Timestamp": stamp}
    headers["X-Apikley-Signature"] = signature or request_signature(key, path, stamp, body)
    return client.post(path, content=body, headers=headers)


def reservation(run_id, owner="edit[0]", part="1.0", count=1, limit=10.0, model=MODEL, **more):
    fields = {"conn_id": "apikley_default", "dag_id": "budgeted", "run_id": run_id, "budget": "default"}
    return {**fields, "limit": limit, "owner": owner, "part": part, "model": model, "count": count, **more}


def settlement(run_id, owner="edit[0]", tasks=(), part=None, model=MODEL):
    fields = {"conn_id": "apikley_default", "dag_id": "budgeted", "run_id": run_id, "budget": "default"}
    return {**fields, "owner": owner, "part": part, "model": model, "tasks": [list(task) for task in tasks]}


def test_reservations_fit_the_limit_and_a_settlement_makes_spent_exact(client, run_id):
    model = f"test/exact-{uuid.uuid4().hex[:12]}"  # no edit of it was ever charged: 1 credit expected
    first = post(client, "/budgets/reserve", reservation(run_id, count=4, limit=5.0, model=model))
    assert first.status_code == 200
    assert first.json() == {"granted": 4, "expected": 1.0, "spent": 0.0, "in_flight": 0.0}
    # the same reservation sent again reserves nothing more
    assert post(client, "/budgets/reserve", reservation(run_id, count=4, limit=5.0, model=model)).json()["granted"] == 4
    second = post(client, "/budgets/reserve", reservation(run_id, owner="edit[1]", count=3, limit=5.0, model=model))
    assert second.json() == {"granted": 1, "expected": 1.0, "spent": 0.0, "in_flight": 4.0}
    # three edits ended, one failed and charged nothing it said; one success charged 0.5
    ended = [(TASK_IDS[0], 0.5, True), (TASK_IDS[1], None, False), (TASK_IDS[2], 0.5, True)]
    settled = post(client, "/budgets/settle", settlement(run_id, tasks=ended, model=model))
    assert settled.json() == {"granted": 0, "expected": 0.5, "spent": 1.0, "in_flight": 1.0}
    # settling the same tasks again (a retry) counts them once
    assert post(client, "/budgets/settle", settlement(run_id, tasks=ended, model=model)).json()["spent"] == 1.0
    # the model's last cost is the expected cost now: 3 credits are left, 1 in flight, 0.5 an edit
    third = post(client, "/budgets/reserve", reservation(run_id, owner="edit[2]", count=10, limit=5.0, model=model))
    assert third.json()["granted"] == 6


def test_twenty_concurrent_reservations_against_ten_edits_accept_exactly_ten(client, run_id):
    # ten edits' credits, at what an edit of the model is expected to cost now
    expected = post(client, "/budgets/reserve", reservation(run_id, owner="probe", limit=0.0)).json()["expected"]
    answers: list[int] = []
    start = threading.Barrier(20)

    def reserve(index: int) -> None:
        start.wait()
        response = post(client, "/budgets/reserve", reservation(run_id, owner=f"edit[{index}]", limit=10 * expected))
        answers.append(response.json()["granted"])

    threads = [threading.Thread(target=reserve, args=(index,)) for index in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [0] * 10 + [1] * 10


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("unsigned", 401),
        ("wrong key", 401),
        ("stale", 401),
        ("another connection", 401),
        ("body changed after signing", 401),
        ("other endpoint's signature", 401),
        ("oversized", 413),
        ("not json", 400),
    ],
)
def test_refused_requests_reserve_nothing(client, run_id, how, expected, monkeypatch):
    fields = reservation(run_id)
    body = json.dumps(fields).encode()
    stamp = str(int(time.time()))
    if how == "unsigned":
        response = client.post("/budgets/reserve", content=body, headers={"Content-Type": "application/json"})
    elif how == "wrong key":
        response = post(client, "/budgets/reserve", fields, key="sk-someone-else")
    elif how == "stale":
        response = post(client, "/budgets/reserve", fields, timestamp=str(int(time.time()) - 3600))
    elif how == "another connection":
        # a connection whose key the caller holds does not open another connection's budgets
        monkeypatch.setenv(
            "AIRFLOW_CONN_APIKLEY_OTHER",
            json.dumps({"conn_type": "apikley", "host": "http://apikley.test", "password": "sk-other-key"}),
        )
        response = post(client, "/budgets/reserve", fields, key="sk-other-key")
    elif how == "body changed after signing":
        signature = request_signature(API_KEY, "/budgets/reserve", stamp, body)
        changed = json.dumps({**fields, "limit": 1e9}).encode()
        response = post(client, "/budgets/reserve", None, timestamp=stamp, signature=signature, raw=changed)
    elif how == "other endpoint's signature":
        signature = request_signature(API_KEY, "/budgets/settle", stamp, body)
        response = post(client, "/budgets/reserve", None, timestamp=stamp, signature=signature, raw=body)
    elif how == "oversized":
        response = post(client, "/budgets/reserve", {**fields, "pad": "x" * 200_000})
    else:
        response = post(client, "/budgets/reserve", None, raw=b"\xff not json")
    assert response.status_code == expected
    assert "sk-" not in response.text
    # nothing was reserved: a budget of one edit still takes one
    expected = post(client, "/budgets/reserve", reservation(run_id, owner="probe", limit=0.0)).json()["expected"]
    assert post(client, "/budgets/reserve", reservation(run_id, limit=expected)).json()["granted"] == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("limit", float("nan"), "limit=nan: must be a number of credits"),
        ("limit", -1, "limit=-1: must be a number of credits"),
        ("limit", True, "limit=True: must be a number of credits"),
        ("count", 0, "count=0: must be a whole number from 1"),
        ("owner", "x" * 251, "must be text of 1 to 250 printable characters"),
        ("model", "../etc", "model='../etc'"),
    ],
)
def test_a_signed_request_with_a_bad_field_is_refused_naming_it(client, run_id, field, value, message):
    body = json.dumps({**reservation(run_id), field: value}).encode()  # json writes NaN as NaN
    response = post(client, "/budgets/reserve", None, raw=body)
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_a_settlement_with_negative_or_nan_credits_is_refused(client, run_id):
    assert post(client, "/budgets/reserve", reservation(run_id)).status_code == 200
    for credits in (-5, float("nan"), float("inf")):
        body = json.dumps(settlement(run_id, tasks=[(TASK_IDS[0], credits, True)])).encode()
        response = post(client, "/budgets/settle", None, raw=body)
        assert response.status_code == 422
        assert "tasks[0][1]=" in response.json()["detail"]
    assert post(client, "/budgets/settle", settlement(run_id)).json()["spent"] == 0.0


def test_a_settlement_of_a_budget_never_reserved_in_is_404(client, run_id):
    assert post(client, "/budgets/settle", settlement(run_id)).status_code == 404


def test_mapped_edits_share_the_runs_budget_and_the_one_over_it_is_refused_before_paying(
    apikley, provider_app_url, source_image_url, client, run_id
):
    from unittest import mock

    from airflow_provider_qwen.exceptions import ApikleyBudgetExceededError
    from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator

    before = apikley.state.credits

    def run(map_index: int) -> dict:
        ti = mock.Mock(dag_id="budgeted", run_id=run_id, task_id="edit", map_index=map_index, try_number=1)
        operator = QwenImageToImageOperator(
            task_id="edit", prompt="sepia", image_url=source_image_url, run_max_credits=2, poll_interval=0.01
        )
        return operator.execute({"ti": ti})

    assert [run(0)["state"], run(1)["state"]] == ["success", "success"]
    with pytest.raises(ApikleyBudgetExceededError) as excinfo:
        run(2)
    assert str(excinfo.value).startswith(
        f"Over budget: the run's budget 'default' (run_max_credits of run {run_id} of DAG budgeted) is 2 credits, "
        "2 spent and 0 in flight, so an edit expected to cost 1 would go past it; nothing was submitted"
    )
    assert len(apikley.seen("createTask")) == 2
    assert apikley.state.credits == before - 2
    # what the ledger holds: the two edits' cost, settled, nothing in flight
    standing = post(
        client,
        "/budgets/reserve",
        reservation(run_id, owner="probe", limit=0.0, model="qwen/image-to-image")
        | {"dag_id": "budgeted", "budget": "default"},
    ).json()
    assert (standing["spent"], standing["in_flight"]) == (2.0, 0.0)
