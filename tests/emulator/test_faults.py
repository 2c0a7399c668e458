"""Injected faults and the maintenance window."""

from __future__ import annotations

import time

import pytest
import requests

from airflow_provider_qwen.emulator import EmulatorSettings, Faults, run_emulator
from tests.emulator.conftest import AUTH, Client


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        ("rate_limited", lambda r: (r.status_code, r.json()["code"], r.headers["Retry-After"]) == (200, 429, "1")),
        ("maintenance", lambda r: (r.status_code, r.json()["code"]) == (200, 455)),
        ("server_error", lambda r: (r.status_code, r.json()["code"]) == (200, 500)),
        ("html", lambda r: r.status_code == 502 and r.headers["content-type"].startswith("text/html")),
    ],
)
def test_each_answering_fault_kind(client, fault, check):
    client.configure(faults={"credit": {fault: 1.0}})
    response = client.credit()
    assert check(response), response.text
    assert client.stats()["api_codes"] == {f"credit fault:{fault}": 1}


def test_the_html_fault_is_an_error_page(client):
    client.configure(faults={"recordInfo": {"html": 1.0}})
    response = client.http.get(f"{client.url}/api/v1/jobs/recordInfo", headers=AUTH, params={"taskId": "x"})
    assert "<html>" in response.text and "502" in response.text
    with pytest.raises(ValueError):
        response.json()


def test_malformed_body_is_not_json(client):
    client.configure(faults={"credit": {"malformed": 1.0}})
    response = client.credit()
    assert (response.status_code, response.headers["content-type"]) == (200, "application/json")
    with pytest.raises(ValueError):
        response.json()


def test_dropped_connection_answers_nothing(client):
    client.configure(faults={"credit": {"drop": 1.0}})
    with pytest.raises(requests.ConnectionError):
        client.credit()
    client.configure(faults={})
    assert client.credit().json()["code"] == 200  # the server itself lives on


def test_slow_answer_is_the_real_answer_late(client):
    client.configure(faults={"credit": {"slow": 1.0, "slow_seconds": 0.3}})
    started = time.monotonic()
    assert client.credit().json()["code"] == 200
    assert time.monotonic() - started >= 0.3
    with pytest.raises(requests.Timeout):
        client.credit(timeout=0.1)
    assert client.stats()["slowed"] == {"credit": 2}
    # the abandoned request is still answered, 0.3 s on: wait for it, or the next test counts it
    deadline = time.monotonic() + 5
    while client.stats()["api_codes"].get("credit 200", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.stats()["api_codes"]["credit 200"] == 2


@pytest.mark.parametrize("fault", ["rate_limited", "maintenance", "server_error", "malformed", "html", "drop"])
def test_a_faulted_create_creates_nothing_and_charges_nothing(client, emulator, fault):
    url = client.image_url()
    client.configure(faults={"createTask": {fault: 1.0}})
    try:
        client.create(image_url=url)
    except requests.ConnectionError:
        assert fault == "drop"
    assert emulator.state.tasks == {}
    stats = client.stats()
    assert (stats["accepted_create_tasks"], stats["credits"]) == (0, 1000)
    assert stats["api_codes"] == {"upload 200": 1, f"createTask fault:{fault}": 1}


def test_a_slow_create_still_creates_once(client):
    client.configure(faults={"createTask": {"slow": 1.0, "slow_seconds": 0.1}})
    assert client.create().json()["code"] == 200
    assert client.stats()["accepted_create_tasks"] == 1


def test_faults_hit_their_share_and_only_their_endpoint(client):
    url = client.image_url()
    client.configure(faults={"createTask": {"server_error": 0.3, "rate_limited": 0.2}}, random_seed=7)
    codes = [client.create(image_url=url).json()["code"] for _ in range(60)]
    assert 8 <= codes.count(500) <= 30
    assert 4 <= codes.count(429) <= 22
    assert client.stats()["accepted_create_tasks"] == codes.count(200)
    assert all(client.credit().json()["code"] == 200 for _ in range(10))


def test_faults_are_reproducible_with_a_seed(emulator_settings):
    def run() -> list[int]:
        settings = emulator_settings.model_copy(
            update={"random_seed": 5, "faults": {"credit": Faults(server_error=0.5)}}
        )
        with run_emulator(settings) as running:
            client = Client(running)
            return [client.credit().json()["code"] for _ in range(20)]

    first = run()
    assert first == run()
    assert set(first) == {200, 500}


def test_faults_for_file_downloads(client):
    url = client.image_url()
    client.configure(faults={"files": {"html": 1.0}})
    assert client.http.get(url).status_code == 502


def test_results_endpoint_faults(client):
    data = client.wait(client.task_id())
    import json

    result = json.loads(data["resultJson"])["resultUrls"][0]
    client.configure(faults={"results": {"drop": 1.0}})
    with pytest.raises(requests.ConnectionError):
        client.http.get(result)


def test_upload_faults(client):
    client.configure(faults={"upload": {"server_error": 1.0}})
    assert client.upload().json()["code"] == 500
    assert client.stats()["files"] == 0


def test_maintenance_window_from_the_start(emulator_settings):
    with run_emulator(emulator_settings.model_copy(update={"maintenance_seconds": 0.4})) as running:
        client = Client(running)
        assert client.credit().json()["code"] == 455
        assert client.create(image_url="http://127.0.0.1/a.png").json()["code"] == 455
        assert client.record("x")["code"] == 455
        assert client.stats()["maintenance"] is True
        time.sleep(0.45)
        assert client.credit().json()["code"] == 200
        assert client.stats()["accepted_create_tasks"] == 0


def test_maintenance_window_set_at_run_time(client):
    url = client.image_url()
    task_id = client.task_id(image_url=url)
    client.configure(maintenance_seconds=0.3)
    assert client.record(task_id)["code"] == 455
    assert client.upload().json()["code"] == 455
    assert client.http.get(url).status_code == 200  # files are still served
    time.sleep(0.35)
    assert client.record(task_id)["code"] == 200


def test_fault_settings_are_checked():
    with pytest.raises(ValueError, match="add up"):
        Faults(server_error=0.7, html=0.5)
    with pytest.raises(ValueError, match="unknown endpoint"):
        EmulatorSettings(faults={"createtask": Faults(html=1)})
    with pytest.raises(ValueError):
        Faults(explode=1)
