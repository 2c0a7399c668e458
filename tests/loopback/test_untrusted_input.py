"""What the hook trusts: its own connection's type and settings, and nothing that arrives from outside."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock
from urllib.parse import urlsplit

import pytest
import requests

from airflow_provider_qwen.emulator import RunningEmulator
from airflow_provider_qwen.emulator.script import ScriptedAnswer, created, envelope, task_record
from airflow_provider_qwen.exceptions import (
    ApikleyAuthError,
    ApikleyBadResponseError,
    ApikleyConfigurationError,
    ApikleyConnectionError,
    ApikleyError,
    ApikleyInputError,
    ApikleyURLRefusedError,
)
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.hooks.deadline import DeadlineAdapter
from airflow_provider_qwen.hooks.envelope import parse_envelope
from airflow_provider_qwen.hooks.retries import RetryPolicy
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from airflow_provider_qwen.sensors.apikley import ApikleyTaskSensor
from tests.conftest import API_KEY, BASE_URL

TASK_ID = "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e"
#: A result URL as a scripted record names it (on a made-up host: never fetched).
RESULT_URL = "https://files.example.org/out/shoe-edited.png"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 64
METADATA_URL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"


def set_connection(monkeypatch, conn_id: str = "apikley_default", **fields) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def apikley_connection(monkeypatch, host: str = BASE_URL, **extra) -> None:
    set_connection(monkeypatch, conn_type="apikley", host=host, password=API_KEY, extra=extra)


def emulator_connection(monkeypatch, apikley: RunningEmulator) -> None:
    """``apikley_default`` pointing at the emulator again, as the ``apikley`` fixture sets it."""
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", apikley.airflow_connection())


@pytest.fixture
def sent_anywhere(monkeypatch) -> list[str]:
    """
    The URL of every request the hook sends, wherever it goes (the emulator journals only what reaches
    it). Only the emulator, on 127.0.0.1, is reached; any other host fails as an unreachable one would.
    """
    sent: list[str] = []
    real_send = DeadlineAdapter.send

    def send(self, request, **kwargs):
        sent.append(request.url)
        if urlsplit(request.url).hostname != "127.0.0.1":
            raise requests.ConnectionError(f"test: {request.url} is out of reach")
        return real_send(self, request, **kwargs)

    monkeypatch.setattr(DeadlineAdapter, "send", send)
    return sent


# ---- connections: only apikley ones, only known extras -------------------------------------------


def test_a_connection_of_another_type_is_refused_before_any_request(monkeypatch, apikley, tmp_path):
    set_connection(
        monkeypatch,
        conn_type="postgres",
        host=apikley.base_url,
        password="pg-password",
        extra={"upload_base_url": apikley.upload_base_url},
    )
    hook = ApikleyHook()
    image = tmp_path / "shoe.png"
    image.write_bytes(PNG)
    for call in (lambda: hook.get_task(TASK_ID), lambda: hook.upload_file(image, "catalog")):
        with pytest.raises(ApikleyConfigurationError, match="of type 'postgres'; Apikley needs a connection of type"):
            call()
    with pytest.raises(ApikleyConfigurationError, match="of type 'postgres'"):
        asyncio.run(ApikleyHook().aget_task(TASK_ID))
    assert apikley.seen() == []


def test_extras_are_settings_never_headers(monkeypatch, apikley, source_image_url):
    extras = {"X-Internal-Token": "LEAKCANARY-extra", "Authorization": "Basic Zm9v"}
    apikley_connection(monkeypatch, host=apikley.base_url, **extras)
    hook = ApikleyHook()
    hook.get_task(hook.create_task("qwen/image-to-image", {"prompt": "p", "image_url": source_image_url}))
    assert [request.endpoint for request in apikley.seen()] == ["createTask", "recordInfo"]
    for request in apikley.seen():
        assert "x-internal-token" not in request.headers
        assert request.headers["authorization"] == f"Bearer {API_KEY}"


def test_the_settings_repr_shows_no_secret(monkeypatch):
    apikley_connection(monkeypatch, webhook_secret="whsec-LEAKCANARY")
    text = repr(ApikleyHook().settings)
    assert API_KEY not in text
    assert "LEAKCANARY" not in text


def test_api_calls_do_not_follow_redirects(apikley):
    # the place it points to would answer with a record: following it would succeed
    apikley.script("recordInfo", ScriptedAnswer(status=302, headers={"Location": f"{apikley.base_url}/files/collect"}))
    apikley.script("files", envelope(task_record(TASK_ID, "success", result_urls=[RESULT_URL])))
    with pytest.raises(ApikleyError):
        ApikleyHook(retry_policy=RetryPolicy(attempts=1)).get_task(TASK_ID)
    assert [request.endpoint for request in apikley.seen()] == ["recordInfo"]


# ---- task ids: one shape wherever they arrive ------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["../escaped", "/abs/evil", "a b", "", "x" * 129, "id\n[fake log line]"])
def test_a_created_task_id_of_the_wrong_shape_is_refused_and_not_resubmitted(apikley, source_image_url, bad_id):
    apikley.script("createTask", created(bad_id))
    with pytest.raises(ApikleyBadResponseError, match="no usable taskId"):
        ApikleyHook().create_task("qwen/image-to-image", {"prompt": "p", "image_url": source_image_url})
    assert len(apikley.seen()) == 1


@pytest.mark.parametrize("bad_id", ["../escaped", "/abs/evil"])
def test_a_record_with_a_task_id_of_the_wrong_shape_is_a_bad_response(apikley, bad_id):
    apikley.script("recordInfo", envelope(task_record(bad_id, "success", result_urls=[RESULT_URL])))
    with pytest.raises(ApikleyBadResponseError, match=r"taskId|task_id"):
        ApikleyHook(retry_policy=RetryPolicy(attempts=1)).get_task(TASK_ID)


def test_a_sensor_argument_of_the_wrong_shape_fails_before_any_request(apikley):
    sensor = ApikleyTaskSensor(task_id="wait", apikley_task_id="../../etc/passwd")
    with pytest.raises(ApikleyInputError, match=r"apikley_task_id='\.\./\.\./etc/passwd': must be 1 to 128"):
        sensor.poke({"ti": mock.Mock()})
    assert apikley.seen() == []


def test_results_are_never_written_outside_output_path(apikley, source_image_url, tmp_path):
    result_url = apikley.put_file("out/shoe-edited.png", PNG)  # there to be fetched
    output = tmp_path / "edits"
    operator = QwenImageToImageOperator(
        task_id="edit", prompt="p", image_url=source_image_url, output_path=f"file://{output}"
    )
    for bad_id in ("../escaped", "../../abs", "/abs/evil"):
        event = {"status": "success", "apikley_task_id": bad_id, "result_urls": [result_url], "input": {}}
        with pytest.raises(ApikleyError):
            operator.execute_complete({"ti": mock.Mock()}, event)
    assert sorted(path.name for path in tmp_path.rglob("*")) == []
    assert apikley.seen() == []


# ---- result downloads ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        METADATA_URL,
        "http://[::ffff:169.254.169.254]/latest/",
        "http://[fe80::1]/x.png",
        "http://100.100.100.200/latest/meta-data/",
        "http://0.0.0.0:8080/x.png",
        "http://127.0.0.1:{emulator_port}/files/x.png",
        "http://10.0.0.7/x.png",
        "file:///etc/passwd",
        "ftp://files.example.org/x.png",
    ],
)
def test_result_urls_to_unsafe_places_are_refused_without_a_request(monkeypatch, apikley, sent_anywhere, tmp_path, url):
    apikley.put_file("x.png", PNG)  # the loopback one would be fetched
    apikley_connection(monkeypatch)  # a public API: its results are on public hosts
    url = url.format(emulator_port=urlsplit(apikley.base_url).port)
    with pytest.raises(ApikleyError):
        ApikleyHook().download_result(url, str(tmp_path / "out.png"))
    assert sent_anywhere == []
    assert apikley.seen() == []
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_to_the_metadata_service_is_refused(apikley, sent_anywhere, tmp_path):
    result_url = f"{apikley.base_url}/results/{TASK_ID}/0.png"
    apikley.script("results", ScriptedAnswer(status=302, headers={"Location": METADATA_URL}))
    with pytest.raises(ApikleyURLRefusedError, match=r"169\.254\.169\.254"):
        ApikleyHook().download_result(result_url, str(tmp_path / "out.png"))
    assert sent_anywhere == [result_url]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("private", ["http://10.0.0.1/admin.png", "http://192.168.1.1/x.png", "http://127.0.0.2/x.png"])
def test_an_api_on_loopback_allows_its_own_address_only_not_every_private_one(
    apikley, sent_anywhere, tmp_path, private
):
    result_url = f"{apikley.base_url}/results/{TASK_ID}/0.png"  # the API's own address: allowed
    apikley.script("results", ScriptedAnswer(status=302, headers={"Location": private}))
    with pytest.raises(ApikleyURLRefusedError, match="other than the API's own"):
        ApikleyHook().download_result(result_url, str(tmp_path / "out.png"))
    assert sent_anywhere == [result_url]  # no connection to the private address was even tried
    assert list(tmp_path.iterdir()) == []


def test_redirects_are_followed_a_few_times_only(apikley, tmp_path):
    apikley.script(
        "results", *(ScriptedAnswer(status=302, headers={"Location": f"/results/hop/{hop + 1}"}) for hop in range(5))
    )
    with pytest.raises(ApikleyURLRefusedError, match="redirects more than 3 times"):
        ApikleyHook().download_result(f"{apikley.base_url}/results/hop/0", str(tmp_path / "out.png"))
    assert [request.path for request in apikley.seen()] == [f"/results/hop/{hop}" for hop in range(4)]
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_to_an_allowed_host_is_followed_and_checked(apikley, tmp_path):
    apikley.script("results", ScriptedAnswer(status=302, headers={"Location": apikley.put_file("cdn/r.png", PNG)}))
    stored = ApikleyHook().download_result(f"{apikley.base_url}/results/{TASK_ID}/0.png", str(tmp_path / "out.png"))
    assert stored.size == len(PNG)
    assert (tmp_path / "out.png").read_bytes() == PNG
    assert [request.path for request in apikley.seen()] == [f"/results/{TASK_ID}/0.png", "/files/cdn/r.png"]


def test_private_result_hosts_need_the_connection_to_allow_them(monkeypatch, apikley, sent_anywhere, tmp_path):
    url = apikley.put_file("out/r.png", PNG)  # on loopback, a private address
    apikley_connection(monkeypatch)  # a public API
    with pytest.raises(ApikleyURLRefusedError, match="private_result_hosts"):
        ApikleyHook().download_result(url, str(tmp_path / "a.png"))
    assert sent_anywhere == []
    apikley_connection(monkeypatch, private_result_hosts="127.0.0.0/8")
    assert ApikleyHook().download_result(url, str(tmp_path / "a.png")).size == len(PNG)
    emulator_connection(monkeypatch, apikley)  # an API on loopback
    with pytest.raises(ApikleyURLRefusedError):
        ApikleyHook().download_result(METADATA_URL, str(tmp_path / "b.png"))
    assert ApikleyHook().download_result(url, str(tmp_path / "b.png")).size == len(PNG)
    assert sent_anywhere == [url, url]


def test_nothing_of_the_connection_or_netrc_goes_to_a_result_host(monkeypatch, apikley, tmp_path):
    result_url = apikley.put_file("out/shoe-edited.png", PNG)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {urlsplit(result_url).hostname} login user password LEAKCANARY-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    apikley_connection(monkeypatch, host=apikley.base_url, **{"X-Internal-Token": "LEAKCANARY-extra"})
    ApikleyHook().download_result(result_url, str(tmp_path / "out.png"))
    [sent] = [request.headers for request in apikley.seen()]
    assert "authorization" not in sent
    assert not any("LEAKCANARY" in str(value) for value in sent.values())


def test_an_upload_file_name_is_checked_like_its_folder(apikley, tmp_path):
    image = tmp_path / "shoe.png"
    image.write_bytes(PNG)
    for name in ("../../escape.png", "a/b.png", "..", "bad\nname.png"):
        with pytest.raises(ApikleyInputError, match="file_name="):
            ApikleyHook().upload_file(image, "catalog", file_name=name)
    assert apikley.seen() == []


def upload_within(seconds: float, *args, **kwargs) -> BaseException | None:
    """Upload in a thread and return what it raised; fail the test if it is still running after ``seconds``."""
    raised: list[BaseException | None] = [None]

    def upload() -> None:
        try:
            ApikleyHook().upload_file(*args, **kwargs)
        except BaseException as err:  # handed to the test
            raised[0] = err

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"upload_file({args[0]!r}) still running after {seconds} s"
    return raised[0]


def test_a_sparse_file_over_the_limit_is_refused_without_being_read(apikley, tmp_path):
    image = tmp_path / "huge.png"
    with image.open("wb") as file:
        file.write(PNG)
        file.truncate(400 * 1024 * 1024)  # 400 MB on disk in name only
    tracemalloc.start()
    try:
        with pytest.raises(ApikleyInputError, match=r"huge\.png' \(419430400 bytes\): must be at most 10485760 bytes"):
            ApikleyHook().upload_file(image, "catalog")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 11 * 1024 * 1024  # never more than the limit in memory, whatever the file's size
    assert apikley.seen() == []


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        pytest.param(lambda tmp_path: os.mkfifo(tmp_path / "pipe.png") or tmp_path / "pipe.png", "FIFO", id="fifo"),
        pytest.param(lambda tmp_path: "/dev/null", "character device", id="device"),
        pytest.param(lambda tmp_path: tmp_path, "folder", id="folder"),
    ],
)
def test_only_a_regular_file_is_read_for_an_upload(apikley, tmp_path, make, kind):
    path = make(tmp_path)
    try:
        raised = upload_within(10, path, "catalog", file_name="shoe.png")
    finally:
        if kind == "FIFO":  # let an upload stuck opening it go
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    assert isinstance(raised, ApikleyInputError)
    assert str(raised) == f"file={str(path)!r}: must be a regular file, not a {kind}; nothing was sent"
    assert apikley.seen() == []


HOSTILE_FILE_NAMES = {
    "division-slash": ("a\u2215b.png", "it holds a path separator, U+2215 DIVISION SLASH"),
    "fullwidth-solidus": ("a\uff0fb.png", "it holds a path separator, U+002F SOLIDUS"),
    "big-solidus": ("a\u29f8b.png", "it holds a path separator, U+29F8 BIG SOLIDUS"),
    "fullwidth-backslash": ("a\uff3cb.png", "it holds a path separator, U+005C REVERSE SOLIDUS"),
    "right-to-left-override": (
        "shoe\u202egnp.exe",
        "it holds a control or format character, U+202E RIGHT-TO-LEFT OVERRIDE",
    ),
    "zero-width-space": ("sh\u200boe.png", "it holds a control or format character, U+200B ZERO WIDTH SPACE"),
    "nul": ("a\x00b.png", "it holds a control or format character, U+0000 (unnamed)"),
    "newline": ("a\nb.png", "it holds a control or format character, U+000A (unnamed)"),
    "line-separator": ("a\u2028b.png", "it holds a control or format character, U+2028 LINE SEPARATOR"),
    "1020-bytes": ("\u540d" * 340, "it is 1020 bytes"),
    "dot-dot": ("..", "it is '..'"),
}


@pytest.mark.parametrize(("name", "problem"), HOSTILE_FILE_NAMES.values(), ids=HOSTILE_FILE_NAMES)
@pytest.mark.parametrize("upload", ["upload_file", "upload_base64", "upload_from_url"])
def test_a_hostile_file_name_is_refused_naming_the_rule(apikley, name, problem, upload):
    source = PNG if upload != "upload_from_url" else "https://cdn.example.org/shoe.png"
    with pytest.raises(ApikleyInputError) as refused:
        getattr(ApikleyHook(), upload)(source, "catalog", file_name=name, overwrite=True)
    assert str(refused.value).startswith(f"file_name={name[:80]!r}")
    assert "must be a plain file name of 1 to 255 bytes" in str(refused.value)
    assert str(refused.value).endswith(f"({problem})")
    assert apikley.seen() == []


def test_the_name_of_a_file_is_held_to_the_same_rule(apikley, tmp_path):
    image = tmp_path / "shoe\u202egnp.png"
    image.write_bytes(PNG)
    with pytest.raises(ApikleyInputError) as refused:
        ApikleyHook().upload_file(image, "catalog", overwrite=True)
    assert str(refused.value).startswith("file_name (the file's name)='shoe\\u202egnp.png': must be a plain file name")
    assert str(refused.value).endswith("(it holds a control or format character, U+202E RIGHT-TO-LEFT OVERRIDE)")
    assert apikley.seen() == []


HOSTILE_UPLOAD_PATHS = {
    "nul": ("catalog/a\x00b", "part 2: it holds a control or format character, U+0000 (unnamed)"),
    "newline": ("catalog\n2026", "part 1: it holds a control or format character, U+000A (unnamed)"),
    "100000-characters": ("a" * 100_000, "it is 100000 bytes"),
    "division-slash": ("catalog/..\u2215etc", "part 2: it holds a path separator, U+2215 DIVISION SLASH"),
    "backslash": ("catalog\\..", "part 1: it holds a path separator, U+005C REVERSE SOLIDUS"),
    "empty-part": ("catalog//2026", "part 2: it is empty"),
    "dot": ("catalog/./2026", "part 2: it is '.'"),
    "fullwidth-leading-slash": ("\uff0fetc", "it starts or ends with '/'"),
    "long-part": ("catalog/" + "b" * 256, "part 2: it is 256 bytes"),
}


@pytest.mark.parametrize(("upload_path", "problem"), HOSTILE_UPLOAD_PATHS.values(), ids=HOSTILE_UPLOAD_PATHS)
def test_a_hostile_upload_path_is_refused_naming_the_rule(apikley, upload_path, problem):
    with pytest.raises(ApikleyInputError) as refused:
        ApikleyHook().upload_file(PNG, upload_path)
    message = str(refused.value)
    assert message.startswith(f"upload_path={upload_path[:80]!r}")
    assert "must be a relative folder of at most 1024 bytes" in message
    assert message.endswith(f"({problem})")
    assert len(message) < 1000  # the value is shortened, not repeated whole
    assert apikley.seen() == []


# ---- answers that are not what they claim --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "charset"),
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "utf-8", id="nested-100000-deep"),
        pytest.param(b'{"code": 200, "msg": "\xff\xfe", "data": {}}', "utf-8", id="invalid-utf8"),
        pytest.param(b'{"code": 200, "data": {}}', "bogus-charset", id="bogus-charset"),
    ],
)
def test_pathological_answers_are_bad_responses_in_both_clients(body, charset):
    with pytest.raises(ApikleyBadResponseError):
        parse_envelope(200, body, charset)


@pytest.mark.parametrize("field", ["resultJson", "param"])
@pytest.mark.parametrize("depth", [65, 10_000, 100_000])
async def test_a_record_nested_too_deeply_is_a_bad_response_in_both_clients(apikley, field, depth):
    record = task_record(TASK_ID, "success", result_urls=[RESULT_URL])
    record[field] = "[" * depth + "]" * depth  # JSON inside the JSON, as Apikley encodes these fields
    for _ in range(2):
        apikley.script("recordInfo", envelope(record))
    with pytest.raises(ApikleyBadResponseError, match="nested"):
        ApikleyHook(retry_policy=RetryPolicy(attempts=1)).get_task(TASK_ID)
    hook = ApikleyHook(retry_policy=RetryPolicy(attempts=1))
    try:
        with pytest.raises(ApikleyBadResponseError, match="nested"):
            await hook.aget_task(TASK_ID)
    finally:
        await hook.aclose()


def test_a_record_nested_as_deeply_as_allowed_is_read(apikley):
    record = task_record(TASK_ID, "success", result_urls=[RESULT_URL])
    record["resultJson"] = json.dumps({"resultUrls": [RESULT_URL], "detail": json.loads("[" * 62 + "]" * 62)})
    apikley.script("recordInfo", envelope(record))
    assert ApikleyHook(retry_policy=RetryPolicy(attempts=1)).get_task(TASK_ID).result_urls == [RESULT_URL]


def test_a_bogus_charset_is_a_bad_response_in_the_blocking_client(apikley):
    apikley.script(
        "recordInfo",
        envelope(
            task_record(TASK_ID, "success", result_urls=[RESULT_URL]),
            content_type="application/json; charset=no-such-charset",
        ),
    )
    with pytest.raises(ApikleyBadResponseError):
        ApikleyHook(retry_policy=RetryPolicy(attempts=1)).get_task(TASK_ID)


def test_a_huge_message_is_shortened_in_the_error(apikley):
    apikley.script("recordInfo", envelope(code=500, msg="x" * 100_000))
    with pytest.raises(ApikleyError) as excinfo:
        ApikleyHook(retry_policy=RetryPolicy(attempts=1)).get_task(TASK_ID)
    assert len(str(excinfo.value)) < 1000


async def test_a_message_with_control_characters_is_quoted_with_them_escaped_in_both_clients(apikley):
    hostile = "Unauthorized\x1b[2J\x1b]52;c;cHduZWQ=\x07\x9b31m\x7f"
    apikley.script("recordInfo", *[envelope(code=401, msg=hostile, status=401)] * 2)
    with pytest.raises(ApikleyAuthError) as blocking:
        ApikleyHook().get_task(TASK_ID)
    hook = ApikleyHook()
    try:
        with pytest.raises(ApikleyAuthError) as non_blocking:
            await hook.aget_task(TASK_ID)
    finally:
        await hook.aclose()
    for error in (blocking.value, non_blocking.value):
        assert "Unauthorized\\x1b[2J\\x1b]52;c;cHduZWQ=\\x07\\x9b31m\\x7f" in str(error)
        assert not re.search(r"[\x00-\x1f\x7f-\x9f]", str(error))


# ---- wall-clock limits ---------------------------------------------------------------------------


@contextmanager
def trickling_server(headers_first: bool, interval: float = 1.0, seconds: float = 12.0) -> Iterator[str]:
    """A loopback HTTP server that answers one byte per ``interval``, for at most ``seconds``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(seconds)
    answer = envelope(task_record(TASK_ID, "success", result_urls=[RESULT_URL])).body
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(answer)}\r\n\r\n".encode()

    def serve() -> None:
        ends = time.monotonic() + seconds
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            if headers_first:
                conn.sendall(head)
            for byte in (answer if headers_first else head + answer)[:200]:
                if time.monotonic() > ends:
                    break
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    break  # the client gave up, as it should
                time.sleep(interval)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(seconds)


@pytest.mark.parametrize("headers_first", [True, False], ids=["slow-body", "slow-headers"])
def test_a_trickling_answer_fails_a_blocking_call_at_its_timeout_not_when_the_server_stops(monkeypatch, headers_first):
    with trickling_server(headers_first) as url:
        apikley_connection(monkeypatch, host=url, timeout=2)
        hook = ApikleyHook(retry_policy=RetryPolicy(attempts=1))
        started = time.monotonic()
        with pytest.raises(ApikleyConnectionError, match="No complete answer within 2 s"):
            hook.get_task(TASK_ID)
        assert time.monotonic() - started < 8  # the server trickles for 12 s; the margin is for a busy machine


def test_a_trickling_result_fails_a_download_at_its_timeout_not_when_the_server_stops(monkeypatch, tmp_path):
    with trickling_server(headers_first=True) as url:
        apikley_connection(monkeypatch, host=url, timeout=2)
        started = time.monotonic()
        with pytest.raises(ApikleyConnectionError, match="No complete answer within 2 s"):
            ApikleyHook(retry_policy=RetryPolicy(attempts=1)).download_result(f"{url}/r.png", str(tmp_path / "r.png"))
        assert time.monotonic() - started < 8  # the server trickles for 12 s; the margin is for a busy machine
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["resultUrls", "resultObject"])
def test_an_answer_with_more_result_urls_than_a_task_may_have_is_refused(where):
    from airflow_provider_qwen.exceptions import ApikleyBadResponseError
    from airflow_provider_qwen.models import MAX_RESULT_URLS, TaskRecord

    urls = [f"https://files.example.org/out/{n}.png" for n in range(MAX_RESULT_URLS + 1)]
    record = task_record("t-many", "success", result_urls=urls[:1])
    result = {"resultUrls": urls} if where == "resultUrls" else {"resultObject": {"images": [{"url": u} for u in urls]}}
    with pytest.raises(ApikleyBadResponseError, match=f"holds {MAX_RESULT_URLS + 1} URLs"):
        TaskRecord.from_api({**record, "resultJson": json.dumps(result)})
    record["resultJson"] = json.dumps({"resultUrls": urls[:MAX_RESULT_URLS]})
    assert len(TaskRecord.from_api(record).result_urls) == MAX_RESULT_URLS
