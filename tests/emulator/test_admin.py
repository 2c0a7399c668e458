"""The admin endpoints, the Python API that runs the emulator, and its command line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from airflow_provider_qwen.emulator import EmulatorSettings, run_emulator
from airflow_provider_qwen.emulator.__main__ import build_parser, settings_from_args
from airflow_provider_qwen.emulator.admin import is_loopback
from tests.emulator.conftest import AUTH, KEY


def test_stats_count_requests_tasks_and_credits(client):
    client.wait(client.task_id())
    client.record("f" * 32)
    client.credit(headers={})
    stats = client.stats()
    assert stats["accepted_create_tasks"] == 1
    assert stats["tasks_by_state"] == {"success": 1}
    assert stats["api_codes"]["upload 200"] == 1
    assert stats["api_codes"]["createTask 200"] == 1
    assert stats["api_codes"]["recordInfo 200"] >= 1
    assert stats["api_codes"]["recordInfo 422"] == 1
    assert stats["http_statuses"]["recordInfo 200"] == stats["api_codes"]["recordInfo 200"] + 1
    assert stats["requests"]["recordInfo"] == stats["api_codes"]["recordInfo 200"] + 1
    assert stats["credits"] == 999
    assert stats["files"] == 2  # the upload and the result


def test_tasks_lists_each_accepted_task_with_the_request_it_was_sent(client):
    url = client.image_url()
    first = client.task_id(image_url=url, prompt="sepia first")
    client.configure(faults={"createTask": {"server_error": 1}})
    assert client.create(image_url=url, prompt="refused").json()["code"] == 500
    client.configure(faults={})
    second = client.task_id(image_url=url, prompt="blur second")
    tasks = client.http.get(f"{client.url}/_emulator/tasks").json()
    assert [task["taskId"] for task in tasks] == [first, second]
    assert [task["request"]["input"]["prompt"] for task in tasks] == ["sepia first", "blur second"]
    assert {task["request"]["model"] for task in tasks} == {"qwen/image-to-image"}
    assert tasks[0]["createTime"] <= tasks[1]["createTime"]
    assert json.loads(client.record(first)["data"]["param"]) == tasks[0]["request"]


def test_stats_tell_the_body_code_of_a_refused_key_from_its_http_status(client):
    """Apikley refuses a key with HTTP 200 and code 401 in the body: the stats name each for what it is."""
    client.credit(headers={"Authorization": "Bearer not-a-key"})
    client.credit(headers=AUTH)
    stats = client.stats()
    assert stats["api_codes"] == {"credit 200": 1, "credit 401": 1}
    assert stats["http_statuses"] == {"credit 200": 2}
    assert stats["requests"] == {"credit": 2}


def test_reset_forgets_tasks_files_stats_and_restores_credits(client):
    url = client.image_url()
    task_id = client.task_id(image_url=url)
    reset = client.http.post(f"{client.url}/_emulator/reset").json()
    assert (reset["accepted_create_tasks"], reset["api_codes"], reset["credits"], reset["files"]) == (0, {}, 1000, 0)
    assert client.record(task_id)["msg"] == "recordInfo is null"
    assert client.http.get(url).status_code == 404


def test_reset_from_python_cancels_running_tasks(emulator, client):
    emulator.configure(latency=(0.2, 0, 0))
    client.task_id()
    emulator.reset()
    time.sleep(0.3)
    assert emulator.state.tasks == {}
    assert emulator.state.background == set()
    assert emulator.stats()["files"] == 0


def test_config_changes_settings_and_refuses_bad_ones(client):
    assert client.configure(fail_fraction=0.25)["fail_fraction"] == 0.25
    assert client.http.get(f"{client.url}/_emulator/config").json()["fail_fraction"] == 0.25
    for bad in ({"fail_fraction": 2}, {"no_such_setting": 1}, {"upload_base_path": "/elsewhere"}, [1]):
        answer = client.http.post(f"{client.url}/_emulator/config", json=bad)
        assert answer.status_code == 422, bad
    assert client.http.get(f"{client.url}/_emulator/config").json()["fail_fraction"] == 0.25


def test_admin_endpoints_answer_loopback_callers_only():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.8.9.10")
    assert not is_loopback("192.168.1.4") and not is_loopback(None) and not is_loopback("testclient")


def test_unknown_paths_are_404_envelopes(client):
    answer = client.http.get(f"{client.url}/api/v1/nothing-here", headers=AUTH)
    assert (answer.status_code, answer.json()["code"]) == (404, 404)


def test_the_emulator_stops_cleanly_and_its_port_is_free_again(emulator_settings):
    with run_emulator(emulator_settings) as running:
        port = int(running.base_url.rsplit(":", 1)[1])
        assert requests.get(f"{running.base_url}/_emulator/health").json() == {"ok": True}
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_a_taken_port_is_reported(emulator_settings):
    with run_emulator(emulator_settings) as running:
        port = int(running.base_url.rsplit(":", 1)[1])
        with pytest.raises(RuntimeError, match="did not start"), run_emulator(emulator_settings, port=port):
            pass


def test_the_connection_it_suggests_points_at_itself(emulator):
    connection = json.loads(emulator.airflow_connection())
    assert connection["host"] == emulator.base_url
    assert connection["password"] == KEY
    assert connection["extra"]["upload_base_url"] == f"{emulator.base_url}/file-upload"
    assert json.loads(emulator.airflow_connection("other"))["password"] == "other"


def test_every_setting_has_a_flag():
    args = build_parser().parse_args(
        [
            "--api-key", "a", "--api-key", "b", "--credits", "5", "--cost-per-task", "0.5",
            "--rate-limit", "3", "--rate-window", "2", "--latency", "0.1", "0.2", "0.3", "--jitter", "0",
            "--fail-fraction", "0.1", "--file-ttl", "60", "--download-link-ttl", "30",
            "--upload-base-path", "/up", "--allow-image-host", "cdn.example.org", "--callback-key", "k",
            "--callback-twice", "--callback-attempts", "5", "--callback-timeout", "3", "--callback-backoff", "0.5",
            "--callback-drop", "0.1",
            "--fault", "recordInfo:server_error=0.1,slow=0.2,slow_seconds=3", "--fault", "createTask:rate_limited=1",
            "--maintenance-seconds", "9", "--seed", "4",
        ]
    )  # fmt: skip
    settings = settings_from_args(args)
    flagged = {
        name
        for name, value in settings.model_dump().items()
        if value != EmulatorSettings.model_fields[name].get_default(call_default_factory=True)
    }
    assert flagged == set(EmulatorSettings.model_fields)
    assert settings.faults["recordInfo"].slow_seconds == 3
    assert settings.faults["createTask"].rate_limited == 1
    assert settings.latency == (0.1, 0.2, 0.3)


def test_a_config_file_is_read_and_flags_override_it(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"credits": 7, "fail_fraction": 0.5, "faults": {"credit": {"html": 0.5}}}))
    settings = settings_from_args(build_parser().parse_args(["--config", str(path), "--credits", "8"]))
    assert (settings.credits, settings.fail_fraction, settings.faults["credit"].html) == (8, 0.5, 0.5)


def test_bad_flags_are_refused(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--fault", "nowhere:html=1"])
    from airflow_provider_qwen.emulator.__main__ import main

    with pytest.raises(SystemExit):
        main(["--fail-fraction", "3"])
    assert "fail_fraction" in capsys.readouterr().err


def test_the_command_line_serves_the_api():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "airflow_provider_qwen.emulator", "--port", str(port), "--api-key", KEY]
    process = subprocess.Popen(
        [*command, "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/api/v1/chat/credit", headers=AUTH, timeout=1)
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, "the emulator did not start"
                time.sleep(0.1)
        assert answer.json() == {"code": 200, "msg": "success", "data": 1000}
    finally:
        process.terminate()
        process.wait(10)
        process.stderr.close()


def test_it_imports_neither_airflow_nor_the_rest_of_the_provider():
    import ast
    from pathlib import Path

    import airflow_provider_qwen.emulator as package

    for source in Path(package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith("airflow.") and name != "airflow", (source.name, name)
                if name.startswith("airflow_provider_qwen"):
                    assert name.startswith("airflow_provider_qwen.emulator"), (source.name, name)
    code = (
        "import sys; from airflow_provider_qwen.emulator import create_app; create_app(); "
        "from airflow_provider_qwen.emulator import bench, __main__; "
        "sys.exit(any(m == 'airflow' or m.startswith('airflow.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd()}).returncode == 0
