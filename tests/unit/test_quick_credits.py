"""The connection ``apikley credits`` reads from ``AIRFLOW_CONN_<ID>`` without Airflow is the one Airflow reads."""

from __future__ import annotations

import json

import pytest

from airflow.sdk import Connection

from airflow_provider_qwen.hooks.quick_credits import env_connection

FIELDS = ("conn_type", "host", "schema", "login", "password", "port")


@pytest.mark.parametrize(
    "value",
    [
        "apikley://:sk-key@api.apikley.ru",
        "apikley://http://:sk%2Fkey%40x@127.0.0.1:8089?timeout=30",
        "apikley://user:pass@example.org:8443/v1?timeout=5&verify=false",
        "apikley://:k@host/?__extra__=%7B%22timeout%22%3A+9%7D",
        "apikley://:k@h",
        '{"conn_type": "apikley", "host": "http://127.0.0.1:8089", "password": "k", "extra": {"timeout": 3}}',
        '{"conn_type": "apikley", "password": "k", "port": "8443", "extra": "{\\"timeout\\": 3}"}',
    ],
)
def test_a_connection_in_the_environment_reads_as_airflow_reads_it(monkeypatch, value):
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_QUICK", value)
    read = env_connection("apikley_quick")
    airflow = Connection.from_json(value, "q") if value.startswith("{") else Connection.from_uri(value, "q")
    assert read is not None
    expected = {name: getattr(airflow, name) or None for name in FIELDS}
    assert {name: read.get(name) or None for name in FIELDS} == expected
    assert read["extra"] == airflow.extra_dejson


@pytest.mark.parametrize(
    "value", ["", "apikley://:k@http://h://x", "{not json", '{"conn_type": "apikley", "colour": 1}']
)
def test_what_airflow_would_refuse_or_not_find_is_left_to_it(monkeypatch, value):
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_QUICK", value)
    assert env_connection("apikley_quick") is None


def test_a_secrets_backend_in_airflow_cfg_is_asked_first(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_QUICK", json.dumps({"conn_type": "apikley", "password": "k"}))
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("AIRFLOW_CONFIG", raising=False)
    assert env_connection("apikley_quick") is not None
    (tmp_path / "airflow.cfg").write_text("[secrets]\nbackend = my.backends.Vault\n")
    assert env_connection("apikley_quick") is None
