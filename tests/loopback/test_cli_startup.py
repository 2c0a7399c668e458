"""What ``apikley`` imports before it answers, and what it says when it cannot find the connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from airflow_provider_qwen.cli import main
from airflow_provider_qwen.hooks import USER_AGENT

WRONG_KEY = "sk-wrong-0123456789abcdef"

#: Runs ``apikley`` with the arguments given, then prints to stderr, last, the Airflow modules it imported.
RUN_AND_LIST_AIRFLOW = """
import json, sys
from airflow_provider_qwen.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exited:
    status = exited.code
print(json.dumps([status, sorted(m for m in sys.modules if m.partition(".")[0] == "airflow")]), file=sys.stderr)
"""


def run_apikley(tmp_path, *argv: str, connection: str | None = None) -> tuple[str, int, list[str]]:
    """Run ``apikley argv`` in a fresh interpreter: what it printed, its status, the Airflow modules it imported."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(tmp_path)  # no airflow.cfg, so no secrets backend
    if connection is not None:
        env["AIRFLOW_CONN_APIKLEY_DEFAULT"] = connection
    ran = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_AIRFLOW, *argv], env=env, capture_output=True, text=True, timeout=120
    )
    status, airflow_modules = json.loads(ran.stderr.splitlines()[-1])
    return ran.stdout, status, airflow_modules


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["credits", "--help"], ["task", "--help"]])
def test_version_and_help_answer_without_importing_airflow(tmp_path, argv):
    printed, status, airflow_modules = run_apikley(tmp_path, *argv)
    assert status == 0 and printed.startswith("apikley 0.1.0" if argv == ["--version"] else "usage: apikley")
    assert airflow_modules == []


def test_credits_of_a_plain_connection_in_the_environment_imports_no_airflow(apikley, tmp_path):
    plain = json.dumps({"conn_type": "apikley", "host": apikley.base_url, "password": apikley.api_key})
    printed, status, airflow_modules = run_apikley(tmp_path, "credits", connection=plain)
    assert (status, printed) == (0, f"apikley_default: {apikley.state.credits:g} credits\n")
    assert airflow_modules == []
    [asked] = apikley.seen("credit")
    assert asked.headers["authorization"] == f"Bearer {apikley.api_key}"
    assert asked.headers["user-agent"] == USER_AGENT


def test_credits_in_the_uri_form_imports_no_airflow_either(apikley, tmp_path):
    uri = f"apikley://http://:{apikley.api_key}@{apikley.base_url.removeprefix('http://')}?timeout=30"
    printed, status, airflow_modules = run_apikley(tmp_path, "credits", connection=uri)
    assert (status, printed, airflow_modules) == (0, f"apikley_default: {apikley.state.credits:g} credits\n", [])


def test_a_refusal_asked_without_airflow_is_read_as_the_hook_reads_it_and_asked_once(apikley, capsys, monkeypatch):
    plain = json.dumps({"conn_type": "apikley", "host": apikley.base_url, "password": WRONG_KEY})
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", plain)
    assert main(["credits"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and WRONG_KEY not in err
    assert err.startswith("apikley credits: Apikley answered code 401")
    assert err.endswith(
        "Check the API key (password) of connection 'apikley_default', "
        "read from environment variable AIRFLOW_CONN_APIKLEY_DEFAULT.\n"
    )
    assert len(apikley.seen("credit")) == 1


def test_a_connection_a_secrets_backend_may_hold_is_left_to_airflow(apikley, capsys, monkeypatch):
    plain = json.dumps({"conn_type": "apikley", "host": apikley.base_url, "password": apikley.api_key})
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", plain)
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", "airflow.secrets.local_filesystem.LocalFilesystemBackend")
    from airflow_provider_qwen.hooks.quick_credits import ask_credits

    assert ask_credits("apikley_default") is None
    assert apikley.seen() == []


def test_an_unknown_connection_is_the_one_line_the_docs_show(capsys, monkeypatch):
    from tests.docs import snippets

    (shown,) = [s for s in snippets("text") if s.code.startswith("apikley credits: connection 'nosuchconn'")]
    monkeypatch.delenv("AIRFLOW_CONN_NOSUCHCONN", raising=False)
    assert main(["credits", "--conn-id", "nosuchconn"]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", shown.code)
    assert "looked in environment variable AIRFLOW_CONN_NOSUCHCONN" in err and err.count("\n") == 1


def test_an_unreadable_connection_variable_is_named_as_such(capsys, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_BROKEN", "apikley://:key@http://host")  # two schemes and a password: not a URI
    assert main(["task", "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e", "--conn-id", "broken"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.endswith("and could not read AIRFLOW_CONN_BROKEN as a connection (a URI or JSON)\n")
