"""The ``apikley`` command against the emulator: what a user types, what they read, what it sends."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airflow_provider_qwen.cli import main
from airflow_provider_qwen.emulator.script import envelope, task_record
from tests.conftest import submit_edit

WRONG_KEY = "sk-wrong-0123456789abcdef"
#: A task id no one created: the answers about it are scripted.
TASK_ID = "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e"
#: What a hostile answer writes to a terminal: clear the screen, set the clipboard (OSC 52), a CSI
#: in its one-byte C1 form, DEL, and a forged line of output.
CLEAR_SCREEN, SET_CLIPBOARD = "\x1b[2J\x1b[H", "\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07"
HOSTILE_TEXT = f"{CLEAR_SCREEN}{SET_CLIPBOARD}\x9b31mred\x7f\ncredits consumed: 0"
#: Bytes that act on a terminal: C0 controls, DEL, and C1 controls as UTF-8 encodes them.
CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]|\xc2[\x80-\x9f]")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def control_bytes(printed: bytes) -> list[bytes]:
    """The bytes in ``printed`` that a terminal acts on, but the newline that ends each line."""
    return CONTROL_BYTES.findall(printed.replace(b"\n", b""))


def test_credits_prints_the_balance_and_follows_what_edits_cost(apikley, capsys, source_image_url):
    assert run(capsys, "credits") == (0, f"apikley_default: {apikley.state.credits:g} credits\n", "")
    before = apikley.state.credits
    apikley.wait_until_ended(submit_edit(source_image_url))
    status, out, _ = run(capsys, "credits")
    assert status == 0 and out == f"apikley_default: {before - apikley.state.settings.cost_per_task:g} credits\n"


def test_credits_reads_the_connection_named(apikley, capsys, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_STAGING", apikley.airflow_connection())
    monkeypatch.delenv("AIRFLOW_CONN_APIKLEY_DEFAULT")
    status, out, _ = run(capsys, "credits", "--conn-id", "apikley_staging")
    assert status == 0 and out.startswith("apikley_staging: ")


def test_task_prints_state_results_and_cost(apikley, capsys, source_image_url):
    apikley.configure(latency=(0.0, 0.0, 0.0))
    task_id = submit_edit(source_image_url)
    apikley.wait_until_ended(task_id)
    status, out, _ = run(capsys, "task", task_id)
    (url,) = apikley.state.tasks[task_id].result_urls
    assert status == 0
    assert out.splitlines() == [
        f"task {task_id}: success",
        "model: qwen/image-to-image",
        f"result: {url}",
        f"credits consumed: {apikley.state.settings.cost_per_task:g}",
    ]
    status, out, _ = run(capsys, "task", task_id, "--json")
    assert json.loads(out)["task_id"] == task_id and json.loads(out)["state"] == "success"


def test_a_hostile_answer_prints_no_control_byte_and_forges_no_line(apikley, capsysbinary):
    succeeded = task_record(TASK_ID, "success", model=f"qwen/image-to-image{HOSTILE_TEXT}")
    succeeded["resultJson"] = json.dumps(
        {"resultUrls": ["https://files.example.org/out.png", f"https://files.example.org/{CLEAR_SCREEN}.png"]}
    )
    failed = task_record(TASK_ID, "fail", fail_code=f"501{CLEAR_SCREEN}", fail_message=HOSTILE_TEXT)
    apikley.script("recordInfo", envelope(succeeded), envelope(failed))
    assert main(["task", TASK_ID]) == 0
    out = capsysbinary.readouterr().out
    assert control_bytes(out) == []
    assert out.decode().splitlines() == [
        f"task {TASK_ID}: success",
        "model: qwen/image-to-image\\x1b[2J\\x1b[H\\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\\x07\\x9b31mred\\x7f"
        "\\x0acredits consumed: 0",
        "result: https://files.example.org/out.png",  # a URL with a control character is not one
        "credits consumed: 1",
    ]
    assert main(["task", TASK_ID]) == 0
    out = capsysbinary.readouterr().out
    assert control_bytes(out) == []
    lines = out.decode().splitlines()
    assert lines[2].startswith("failed: 501\\x1b[2J\\x1b[H \\x1b[2J") and lines[2].endswith("\\x0acredits consumed: 0")
    # a failed edit may cost credits too: one line says what it was charged, the forged one stays inside the failure's
    assert [line for line in lines if line.startswith("credits consumed")] == ["credits consumed: 1"]


def test_a_refusal_with_a_hostile_message_prints_one_line_without_control_bytes(apikley, capsysbinary):
    apikley.script("credit", envelope(code=401, msg=f"Unauthorized{HOSTILE_TEXT}", status=401))
    assert main(["credits"]) == 1
    printed = capsysbinary.readouterr()
    assert printed.out == b""
    assert control_bytes(printed.err) == [] and printed.err.count(b"\n") == 1
    assert printed.err.startswith(b"apikley credits: Apikley answered code 401 (HTTP 401): Unauthorized\\x1b[2J")


def test_a_malformed_task_id_is_refused_before_any_request(apikley, capsys):
    status, out, err = run(capsys, "task", "../../etc/passwd")
    assert status == 1 and out == ""
    assert err.startswith("apikley task: apikley_task_id='../../etc/passwd': must be")
    assert apikley.seen() == []


def test_a_refused_key_is_one_line_that_names_the_connection_not_the_key(apikley, capsys, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", apikley.airflow_connection(api_key=WRONG_KEY))
    status, out, err = run(capsys, "credits")
    assert status == 1 and out == ""
    assert err.count("\n") == 1 and "401" in err and "apikley_default" in err
    assert WRONG_KEY not in err


def test_the_refusal_the_docs_show_is_the_one_printed(apikley, capsys, monkeypatch):
    from tests.docs import snippets

    (shown,) = [s for s in snippets("text") if s.code.startswith("apikley credits: Apikley answered code 401")]
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", apikley.airflow_connection(api_key=WRONG_KEY))
    assert run(capsys, "credits")[2] == shown.code


def test_the_installed_command_runs_the_emulator_and_asks_it(tmp_path):
    """The console script the wheel installs: ``apikley emulator`` serves, ``apikley credits`` reads it."""
    from tests.system.ports import free_port

    command = Path(sys.executable).parent / "apikley"
    port = free_port()
    server = subprocess.Popen(
        [str(command), "emulator", "--port", str(port), "--api-key", "cli-key", "--credits", "42"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.poll() is None:  # serving before it is asked
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        connection = json.dumps({"conn_type": "apikley", "host": f"http://127.0.0.1:{port}", "password": "cli-key"})
        env = {**os.environ, "AIRFLOW_CONN_APIKLEY_DEFAULT": connection}
        asked = subprocess.run([str(command), "credits"], env=env, capture_output=True, text=True, timeout=60)
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout == "apikley_default: 42 credits\n"
    finally:
        server.terminate()
        server.wait(10)


def test_the_emulator_command_says_which_extra_it_needs(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "airflow_provider_qwen.emulator.__main__", None)  # as without the extra
    assert main(["emulator", "--port", "0"]) == 2
    assert "pip install 'airflow-provider-qwen[emulator]'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["task"]])
def test_usage_errors_exit_2_with_argparse_usage(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and capsys.readouterr().err.startswith("usage: apikley")
