"""Extras the provider does not read: one warning that suggests the right name, or a refusal under ``strict_extras``."""

from __future__ import annotations

import json
import logging

import pytest

from airflow_provider_qwen.exceptions import ApikleyConfigurationError
from airflow_provider_qwen.hooks import connection
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.hooks.retries import RetryPolicy
from tests.conftest import API_KEY


@pytest.fixture(autouse=True)
def nothing_warned_yet(monkeypatch):
    monkeypatch.setattr(connection, "_warned_extras", set(), raising=False)


def set_extra(monkeypatch, apikley, **extra):
    value = {"conn_type": "apikley", "host": apikley.base_url, "password": API_KEY, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", json.dumps(value))


def unknown_extra_warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if "not Apikley settings" in record.getMessage()]


def test_a_mistyped_extra_is_one_warning_per_process_that_suggests_the_extra_meant(apikley, monkeypatch, caplog):
    set_extra(monkeypatch, apikley, timout=5, verfiy="false")
    caplog.set_level(logging.WARNING, logger=connection.__name__)
    for _ in range(3):  # an operator, its sensor and a second try each read the connection
        assert ApikleyHook(retry_policy=RetryPolicy(attempts=1)).get_credits() == apikley.state.credits
    assert unknown_extra_warnings(caplog) == [
        "Connection 'apikley_default': extras 'timout' (did you mean 'timeout'?), "
        "'verfiy' (did you mean 'verify'?) are not Apikley settings and are ignored"
    ]


@pytest.mark.parametrize("strict", [True, "true"])
def test_strict_extras_refuses_an_unknown_extra_before_any_request(apikley, monkeypatch, caplog, strict):
    set_extra(monkeypatch, apikley, timout=5, webhook_secert="whsec-not-shown", strict_extras=strict)
    with pytest.raises(ApikleyConfigurationError) as refused:
        ApikleyHook().get_credits()
    assert str(refused.value).startswith(
        "Connection 'apikley_default' extra timout=5 (did you mean 'timeout'?), "
        "webhook_secert (a text, not shown) (did you mean 'webhook_secret'?): not an Apikley setting, "
        "and strict_extras refuses extras the provider does not read (it reads creates_per_window, "
        "private_result_hosts, proxies, "
    )
    assert "whsec-not-shown" not in str(refused.value)
    assert apikley.seen() == []


@pytest.mark.parametrize("strict", [False, "false", None])
def test_without_strict_extras_an_unknown_extra_is_ignored(apikley, monkeypatch, strict):
    set_extra(monkeypatch, apikley, colour="blue", strict_extras=strict)
    assert ApikleyHook().get_credits() == apikley.state.credits


def test_strict_extras_that_is_not_a_boolean_is_refused_naming_it(apikley, monkeypatch):
    set_extra(monkeypatch, apikley, strict_extras="yes please")
    with pytest.raises(ApikleyConfigurationError, match=r"extra strict_extras \(a text, not shown\): must be true or"):
        ApikleyHook().get_credits()
    assert apikley.seen() == []


@pytest.mark.parametrize(
    ("extra", "rule"),
    [
        ({"creates_per_window": 0}, "extra creates_per_window=0: must be a whole number from 1 to 1000000"),
        ({"creates_per_window": "2.5"}, "extra creates_per_window='2.5': must be a whole number"),
        ({"creates_per_window": True}, "extra creates_per_window=True: must be a whole number"),
        ({"window_seconds": 0}, "extra window_seconds=0: must be a number of seconds above 0, at most 86400"),
        ({"window_seconds": "NaN"}, "extra window_seconds='NaN': must be a number of seconds"),
        ({"window_seconds": 1e9}, "extra window_seconds=1000000000.0: must be a number of seconds"),
        ({"shared_create_pace": "sometimes"}, "extra shared_create_pace (a text, not shown): must be true or false"),
    ],
    ids=[
        "no creates",
        "a fraction of creates",
        "creates as a boolean",
        "no window",
        "NaN window",
        "a window of years",
        "a pace neither on nor off",
    ],
)
def test_a_create_rate_extra_that_breaks_its_rule_is_refused_naming_it(apikley, monkeypatch, extra, rule):
    set_extra(monkeypatch, apikley, **extra)
    with pytest.raises(ApikleyConfigurationError) as refused:
        ApikleyHook().get_credits()
    assert f"Connection 'apikley_default' {rule}" in str(refused.value)
    assert apikley.seen() == []


@pytest.mark.parametrize(
    ("extra", "read"),
    [
        ({}, (20, 10.0, True)),
        ({"creates_per_window": None, "window_seconds": "", "shared_create_pace": None}, (20, 10.0, True)),
        ({"creates_per_window": "40", "window_seconds": "2.5", "shared_create_pace": "false"}, (40, 2.5, False)),
        ({"creates_per_window": 5, "window_seconds": 1, "shared_create_pace": True}, (5, 1.0, True)),
    ],
    ids=["unset: Apikley's limit, paced", "left empty in the form", "as the form saves them", "as JSON"],
)
def test_the_create_rate_and_the_shared_pace_are_read_from_the_extras(apikley, monkeypatch, extra, read):
    set_extra(monkeypatch, apikley, **extra)
    settings = ApikleyHook().settings
    assert (settings.creates_per_window, settings.window_seconds, settings.shared_create_pace) == read
