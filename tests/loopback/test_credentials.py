"""
No credential in any text that leaves the process: errors, trigger events, logs, reprs, XCom, the command's output.

A connection's secrets live in its password, in its extras (``webhook_secret``, ``route_keys``) and
inside URLs (``user:password@`` in the host, ``upload_base_url``, ``proxies``, a ``callback_url``).
The proxy here answers every request 407, as a proxy that refuses the credentials it was given.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from unittest import mock

import pytest

from airflow.providers.common.compat.sdk import redact

from airflow_provider_qwen.cli import main
from airflow_provider_qwen.exceptions import ApikleyConfigurationError, ApikleyConnectionError, ApikleyError
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.hooks.retries import RetryPolicy
from airflow_provider_qwen.triggers.apikley import ApikleyTaskTrigger
from airflow_provider_qwen.triggers.batch import ApikleyBatchTrigger
from tests.conftest import API_KEY, edit_operator, submit_edit

TASK_ID = "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e"

#: One mark per place a user can put a secret, so a leak says which one leaked.
API_KEY_MARK = "sk-MARK-apikey-0123456789abcdef"
PROXY_MARK = "MARK-proxy-pass"
HOST_MARK = "MARK-host-pass"
UPLOAD_MARK = "MARK-upload-pass"
WEBHOOK_MARK = "MARK-webhook-secret"
ROUTE_MARK = "MARK-route-key-0123456789abcdef0123456789"
CALLBACK_MARK = "MARK-callback-pass"
MARKS = (API_KEY_MARK, PROXY_MARK, HOST_MARK, UPLOAD_MARK, WEBHOOK_MARK, ROUTE_MARK, CALLBACK_MARK)

PROXY_REFUSAL = (
    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
    b'Proxy-Authenticate: Basic realm="proxy"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'
)


@pytest.fixture(scope="module")
def refusing_proxy() -> Iterator[str]:
    """``127.0.0.1:<port>`` of a proxy that answers every request, CONNECT or not, with 407."""
    loop = asyncio.new_event_loop()

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(PROXY_REFUSAL)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = loop.run_until_complete(asyncio.start_server(refuse, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


def set_connection(monkeypatch, conn_id: str = "apikley_default", **fields) -> None:
    fields.setdefault("password", API_KEY_MARK)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "apikley", **fields}))


def behind_the_proxy(monkeypatch, proxy: str, conn_id: str = "apikley_default") -> None:
    """A connection to an https API through ``proxy``, with the proxy's password in its URL."""
    set_connection(
        monkeypatch,
        conn_id,
        host="https://apikley.test",
        extra={"proxies": {"https": f"http://user:{PROXY_MARK}@{proxy}"}},
    )


def leaked(text: str) -> list[str]:
    return [mark for mark in MARKS if mark in text]


def test_a_refusing_proxy_on_the_blocking_path_leaks_no_password(refusing_proxy, monkeypatch, caplog):
    behind_the_proxy(monkeypatch, refusing_proxy)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ApikleyConnectionError) as excinfo:
        ApikleyHook(retry_policy=RetryPolicy(attempts=2)).get_task(TASK_ID)
    assert "407" in str(excinfo.value)
    assert leaked(str(excinfo.value) + repr(excinfo.value) + caplog.text) == []
    # whatever else prints it, Airflow's masker hides it in task logs
    assert PROXY_MARK not in redact(f"proxy http://user:{PROXY_MARK}@{refusing_proxy}")


def test_a_refusing_proxy_fails_the_operator_naming_no_password(refusing_proxy, monkeypatch, caplog):
    behind_the_proxy(monkeypatch, refusing_proxy)
    caplog.set_level(logging.DEBUG)
    context = {"ti": mock.Mock()}
    with pytest.raises(ApikleyError) as excinfo:
        edit_operator("qwen", task_id="edit", prompt="sepia", image_url="https://files.example.org/a.png").execute(
            context
        )
    assert "407" in str(excinfo.value)
    assert leaked(str(excinfo.value) + caplog.text + repr(context["ti"].mock_calls)) == []
    assert PROXY_MARK not in redact(f"http://user:{PROXY_MARK}@{refusing_proxy}")  # the task log's masker knows it


async def test_a_refusing_proxy_in_the_triggerer_yields_an_error_event_naming_no_password(
    refusing_proxy, monkeypatch, caplog
):
    behind_the_proxy(monkeypatch, refusing_proxy)
    caplog.set_level(logging.DEBUG)
    trigger = ApikleyTaskTrigger(TASK_ID, deadline=time.time() + 60, poll_interval=0.01, max_consecutive_poll_errors=2)
    (event,) = [event.payload async for event in trigger.run()]
    assert event["status"] == "error" and "407" in event["message"]
    assert f"http://{refusing_proxy}" in event["message"]  # the proxy is named, its credentials are not
    assert leaked(json.dumps(event) + caplog.text) == []


async def test_a_refusing_proxy_in_the_batch_trigger_yields_events_naming_no_password(
    refusing_proxy, monkeypatch, caplog
):
    behind_the_proxy(monkeypatch, refusing_proxy)
    caplog.set_level(logging.DEBUG)
    tasks = [[TASK_ID, time.time()], [TASK_ID[::-1], time.time()]]
    trigger = ApikleyBatchTrigger(tasks, expected_duration=0, poll_interval=0.01, max_consecutive_poll_errors=2)
    (event,) = [event.payload async for event in trigger.run()]
    assert [item["status"] for item in event["tasks"]] == ["error", "error"]
    assert all("407" in item["message"] for item in event["tasks"])
    assert leaked(json.dumps(event) + caplog.text) == []


def test_the_settings_repr_hides_every_credential(monkeypatch):
    set_connection(
        monkeypatch,
        host=f"https://user:{HOST_MARK}@apikley.test",
        extra={
            "proxies": {"https": f"http://user:{PROXY_MARK}@proxy.test:3128"},
            "upload_base_url": f"https://user:{UPLOAD_MARK}@uploads.apikley.test",
            "webhook_secret": WEBHOOK_MARK,
            "route_keys": [ROUTE_MARK],
        },
    )
    settings = ApikleyHook().settings
    assert leaked(repr(settings)) == []
    assert "proxy.test:3128" in repr(settings) and "uploads.apikley.test" in repr(settings)  # what is not secret shows
    assert settings.proxies == {"https": f"http://user:{PROXY_MARK}@proxy.test:3128"}  # requests still gets it


#: Connections a user can get wrong with a secret in them, and the field each error must name.
MISTAKES = {
    "host with another scheme": ({"host": f"ftp://user:{HOST_MARK}@apikley.test"}, "host"),
    "host with a bad port": ({"host": f"https://user:{HOST_MARK}@apikley.test:port"}, "host"),
    "upload_base_url with another scheme": (
        {"host": "https://apikley.test", "extra": {"upload_base_url": f"ftp://user:{UPLOAD_MARK}@uploads.test"}},
        "upload_base_url",
    ),
    "the key pasted into upload_base_url": (
        {"host": "https://apikley.test", "extra": {"upload_base_url": API_KEY_MARK}},
        "upload_base_url",
    ),
    "the key pasted into timeout": ({"host": "https://apikley.test", "extra": {"timeout": API_KEY_MARK}}, "timeout"),
    "the key pasted into verify": ({"host": "https://apikley.test", "extra": {"verify": API_KEY_MARK}}, "verify"),
    "the webhook secret pasted into verify": (
        {"host": "https://apikley.test", "extra": {"verify": {"secret": WEBHOOK_MARK}}},
        "verify",
    ),
}


@pytest.mark.parametrize(("fields", "field"), MISTAKES.values(), ids=MISTAKES.keys())
@pytest.mark.parametrize("command", [["credits"], ["task", TASK_ID]], ids=["credits", "task"])
def test_every_cli_error_names_the_field_not_the_secret(command, fields, field, monkeypatch, capsys):
    set_connection(monkeypatch, **fields)
    assert main(command) == 1
    out, err = capsys.readouterr()
    assert out == "" and f" {field}" in err and err.count("\n") == 1
    assert leaked(err) == []


def with_password_in_host(monkeypatch, apikley) -> None:
    """``apikley_default`` to the emulator, its host holding a ``user:password`` Apikley never reads."""
    host = apikley.base_url.replace("://", f"://user:{HOST_MARK}@")
    set_connection(monkeypatch, host=host, password=API_KEY, extra={"upload_base_url": apikley.upload_base_url})


def test_the_connection_test_names_the_host_without_its_password(apikley, monkeypatch):
    with_password_in_host(monkeypatch, apikley)
    ok, message = ApikleyHook().test_connection()
    assert ok and f"Connected to {apikley.base_url.replace('://', '://***@')}: " in message
    assert leaked(message) == []


async def test_a_host_with_a_password_reaches_the_api_with_the_key_alone_on_both_paths(
    apikley, source_image_url, monkeypatch
):
    with_password_in_host(monkeypatch, apikley)
    apikley.configure(latency=(0.0, 0.0, 0.0))
    task_id = submit_edit(source_image_url)  # the blocking client
    apikley.wait_until_ended(task_id)
    trigger = ApikleyTaskTrigger(task_id, deadline=time.time() + 60, poll_interval=0.01)
    (event,) = [event.payload async for event in trigger.run()]  # the async one
    assert event["status"] == "success"
    api_calls = apikley.seen("createTask") + apikley.seen("recordInfo")
    assert {request.headers["authorization"] for request in api_calls} == {f"Bearer {API_KEY}"}


def test_a_number_out_of_range_is_quoted_a_text_is_not(monkeypatch):
    set_connection(monkeypatch, host="https://apikley.test", extra={"timeout": -5})
    with pytest.raises(ApikleyConfigurationError, match=r"extra timeout=-5: must be a number of seconds > 0"):
        _ = ApikleyHook().settings
    set_connection(monkeypatch, host="https://apikley.test", extra={"timeout": "five"})
    with pytest.raises(ApikleyConfigurationError) as excinfo:
        _ = ApikleyHook().settings
    assert "five" not in str(excinfo.value) and "extra timeout" in str(excinfo.value)


async def test_no_planted_secret_leaves_the_process_on_any_failing_path(
    refusing_proxy, apikley, monkeypatch, caplog, capsys
):
    """Every place a user can put a secret, marked; every failing path driven; everything written searched."""
    caplog.set_level(logging.DEBUG)
    planted = {
        "host": f"https://user:{HOST_MARK}@apikley.test",
        "password": API_KEY_MARK,
        "extra": {
            "proxies": {"https": f"http://user:{PROXY_MARK}@{refusing_proxy}"},
            "upload_base_url": f"https://user:{UPLOAD_MARK}@uploads.apikley.test",
            "webhook_secret": WEBHOOK_MARK,
            "route_keys": [ROUTE_MARK],
        },
    }
    set_connection(monkeypatch, "apikley_marked", **planted)
    written: list[str] = []
    hook = ApikleyHook("apikley_marked", retry_policy=RetryPolicy(attempts=2))
    written.append(repr(hook.settings))

    def failing(call) -> None:
        try:
            call()
        except Exception as err:  # every failure the user reads
            written.extend([str(err), repr(err), str(err.__cause__ or ""), str(err.__context__ or "")])
        else:
            pytest.fail(f"{call} did not fail")

    failing(lambda: hook.get_credits())
    failing(lambda: hook.get_task(TASK_ID))
    failing(lambda: hook.create_task("qwen/image-to-image", {"prompt": "sepia", "image_url": "https://x.test/a.png"}))
    failing(lambda: hook.upload_file(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "catalog", file_name="a.png"))
    failing(lambda: hook.download_result(f"http://user:{HOST_MARK}@169.254.169.254/latest", "file:///tmp/out"))
    for deferrable in (False, True):
        context = {"ti": mock.Mock()}
        operator = edit_operator(
            "qwen",
            task_id="edit",
            prompt="sepia",
            image_url="https://files.example.org/a.png",
            apikley_conn_id="apikley_marked",
            deferrable=deferrable,
        )
        failing(lambda operator=operator, context=context: operator.execute(context))
        written.append(repr(context["ti"].mock_calls))  # XCom pushes
    failing(
        lambda: edit_operator(
            "qwen",
            task_id="edit",
            prompt="sepia",
            image_url="https://files.example.org/a.png",
            callback_url=f"ftp://user:{CALLBACK_MARK}@hooks.test/done",
            apikley_conn_id="apikley_marked",
        ).execute({"ti": mock.Mock()})
    )
    trigger = ApikleyTaskTrigger(
        TASK_ID, "apikley_marked", deadline=time.time() + 60, poll_interval=0.01, max_consecutive_poll_errors=2
    )
    written += [json.dumps(event.payload) async for event in trigger.run()]
    batch = ApikleyBatchTrigger(
        [[TASK_ID, time.time()]],
        "apikley_marked",
        expected_duration=0,
        poll_interval=0.01,
        max_consecutive_poll_errors=2,
    )
    written += [json.dumps(event.payload) async for event in batch.run()]
    for command in (["credits"], ["task", TASK_ID]):
        assert main([*command, "--conn-id", "apikley_marked"]) == 1
    for misplaced in ({"timeout": API_KEY_MARK}, {"upload_base_url": f"ftp://user:{UPLOAD_MARK}@uploads.test"}):
        set_connection(monkeypatch, "apikley_marked", **{**planted, "extra": {**planted["extra"], **misplaced}})
        failing(lambda: ApikleyHook("apikley_marked").settings)
        assert main(["credits", "--conn-id", "apikley_marked"]) == 1
    out, err = capsys.readouterr()
    written += [out, err, caplog.text]
    assert "407" in "".join(written)  # the proxy was reached, and refused
    assert leaked("\n".join(written)) == []
