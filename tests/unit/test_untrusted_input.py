"""What the hook trusts: its own connection's type and settings, and nothing that arrives from outside."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import pytest

from airflow_provider_qwen.exceptions import (
    ApikleyBadResponseError,
    ApikleyConfigurationError,
    ApikleyConnectionError,
    ApikleyError,
    ApikleyInputError,
    ApikleyURLRefusedError,
)
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.hooks.envelope import parse_envelope
from airflow_provider_qwen.hooks.retries import RetryPolicy
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from airflow_provider_qwen.sensors.apikley import ApikleyTaskSensor
from tests.conftest import API_KEY, BASE_URL
from tests.unit.fixtures import IMAGE_URL, RESULT_URL, TASK_ID, created, envelope, record

CREATE_URL = f"{BASE_URL}/api/v1/jobs/createTask"
RECORD_URL = f"{BASE_URL}/api/v1/jobs/recordInfo"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 64
METADATA_URL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"


def set_connection(monkeypatch, conn_id: str = "apikley_default", **fields) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def apikley_connection(monkeypatch, host: str = BASE_URL, **extra) -> None:
    set_connection(monkeypatch, conn_type="apikley", host=host, password=API_KEY, extra=extra)


# ---- connections: only apikley ones, only known extras -------------------------------------------


def test_a_connection_of_another_type_is_refused_before_any_request(monkeypatch, requests_mock, tmp_path):
    set_connection(monkeypatch, conn_type="postgres", host=BASE_URL, password="pg-password")
    hook = ApikleyHook()
    image = tmp_path / "shoe.png"
    image.write_bytes(PNG)
    for call in (lambda: hook.get_task(TASK_ID), lambda: hook.upload_file(image, "catalog")):
        with pytest.raises(ApikleyConfigurationError, match="of type 'postgres'; Apikley needs a connection of type"):
            call()
    with pytest.raises(ApikleyConfigurationError, match="of type 'postgres'"):
        asyncio.run(ApikleyHook().aget_task(TASK_ID))
    assert requests_mock.call_count == 0


def test_extras_are_settings_never_headers(monkeypatch, requests_mock):
    apikley_connection(monkeypatch, **{"X-Internal-Token": "LEAKCANARY-extra", "Authorization": "Basic Zm9v"})
    requests_mock.get(RECORD_URL, json=record("success"))
    ApikleyHook().get_task(TASK_ID)
    sent = requests_mock.last_request.headers
    assert "X-Internal-Token" not in sent
    assert sent["Authorization"] == f"Bearer {API_KEY}"


def test_the_settings_repr_shows_no_secret(monkeypatch):
    apikley_connection(monkeypatch, webhook_secret="whsec-LEAKCANARY")
    text = repr(ApikleyHook().settings)
    assert API_KEY not in text
    assert "LEAKCANARY" not in text


def test_api_calls_do_not_follow_redirects(monkeypatch, requests_mock):
    requests_mock.get(RECORD_URL, status_code=302, headers={"Location": "https://elsewhere.test/collect"})
    requests_mock.get("https://elsewhere.test/collect", json=record("success"))
    with pytest.raises(ApikleyError):
        ApikleyHook(retry_policy=RetryPolicy(attempts=1)).get_task(TASK_ID)
    assert [request.url.split("?")[0] for request in requests_mock.request_history] == [RECORD_URL]


# ---- task ids: one shape wherever they arrive ------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["../escaped", "/abs/evil", "a b", "", "x" * 129, "id\n[fake log line]"])
def test_a_created_task_id_of_the_wrong_shape_is_refused_and_not_resubmitted(requests_mock, bad_id):
    requests_mock.post(CREATE_URL, json=created(bad_id))
    with pytest.raises(ApikleyBadResponseError, match="no usable taskId"):
        ApikleyHook().create_task("qwen/image-to-image", {"prompt": "p", "image_url": IMAGE_URL})
    assert requests_mock.call_count == 1


@pytest.mark.parametrize("bad_id", ["../escaped", "/abs/evil"])
def test_a_record_with_a_task_id_of_the_wrong_shape_is_a_bad_response(requests_mock, bad_id):
    requests_mock.get(RECORD_URL, json=record("success", task_id=bad_id))
    with pytest.raises(ApikleyBadResponseError, match=r"taskId|task_id"):
        ApikleyHook(retry_policy=RetryPolicy(attempts=1)).get_task(TASK_ID)


def test_a_sensor_argument_of_the_wrong_shape_fails_before_any_request(requests_mock):
    sensor = ApikleyTaskSensor(task_id="wait", apikley_task_id="../../etc/passwd")
    with pytest.raises(ApikleyInputError, match=r"apikley_task_id='\.\./\.\./etc/passwd': must be 1 to 128"):
        sensor.poke({"ti": mock.Mock()})
    assert requests_mock.call_count == 0


def test_results_are_never_written_outside_output_path(requests_mock, tmp_path):
    requests_mock.get(RESULT_URL, content=PNG)
    output = tmp_path / "edits"
    operator = QwenImageToImageOperator(task_id="edit", prompt="p", image_url=IMAGE_URL, output_path=f"file://{output}")
    for bad_id in ("../escaped", "../../abs", "/abs/evil"):
        event = {"status": "success", "apikley_task_id": bad_id, "result_urls": [RESULT_URL], "input": {}}
        with pytest.raises(ApikleyError):
            operator.execute_complete({"ti": mock.Mock()}, event)
    assert sorted(path.name for path in tmp_path.rglob("*")) == []
    assert requests_mock.call_count == 0


# ---- result downloads ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        METADATA_URL,
        "http://[::ffff:169.254.169.254]/latest/",
        "http://[fe80::1]/x.png",
        "http://100.100.100.200/latest/meta-data/",
        "http://0.0.0.0:8080/x.png",
        "http://127.0.0.1:8080/x.png",
        "http://10.0.0.7/x.png",
        "file:///etc/passwd",
        "ftp://files.example.org/x.png",
    ],
)
def test_result_urls_to_unsafe_places_are_refused_without_a_request(requests_mock, tmp_path, url):
    with pytest.raises(ApikleyError):
        ApikleyHook().download_result(url, str(tmp_path / "out.png"))
    assert requests_mock.call_count == 0
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_to_the_metadata_service_is_refused(requests_mock, tmp_path):
    requests_mock.get(RESULT_URL, status_code=302, headers={"Location": METADATA_URL})
    with pytest.raises(ApikleyURLRefusedError, match=r"169\.254\.169\.254"):
        ApikleyHook().download_result(RESULT_URL, str(tmp_path / "out.png"))
    assert [request.url for request in requests_mock.request_history] == [RESULT_URL]


def test_redirects_are_followed_a_few_times_only(requests_mock, tmp_path):
    for hop in range(5):
        requests_mock.get(f"https://cdn.apikley.test/{hop}", status_code=302, headers={"Location": f"/{hop + 1}"})
    with pytest.raises(ApikleyURLRefusedError, match="redirects more than 3 times"):
        ApikleyHook().download_result("https://cdn.apikley.test/0", str(tmp_path / "out.png"))
    assert requests_mock.call_count == 4


def test_a_public_redirect_is_followed_and_checked(requests_mock, tmp_path):
    requests_mock.get(RESULT_URL, status_code=302, headers={"Location": "https://cdn.apikley.test/r.png"})
    requests_mock.get("https://cdn.apikley.test/r.png", content=PNG)
    stored = ApikleyHook().download_result(RESULT_URL, str(tmp_path / "out.png"))
    assert stored.size == len(PNG)


def test_private_result_hosts_need_the_connection_to_allow_them(monkeypatch, requests_mock, tmp_path):
    url = "http://10.0.0.7/r.png"
    requests_mock.get(url, content=PNG)
    apikley_connection(monkeypatch, private_result_hosts="10.0.0.0/24")
    assert ApikleyHook().download_result(url, str(tmp_path / "a.png")).size == len(PNG)
    apikley_connection(monkeypatch, host="http://127.0.0.1:9")  # an emulator on loopback
    with pytest.raises(ApikleyURLRefusedError):
        ApikleyHook().download_result(METADATA_URL, str(tmp_path / "b.png"))
    assert ApikleyHook().download_result(url, str(tmp_path / "b.png")).size == len(PNG)


def test_nothing_of_the_connection_or_netrc_goes_to_a_result_host(monkeypatch, requests_mock, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine files.example.org login user password LEAKCANARY-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    apikley_connection(monkeypatch, **{"X-Internal-Token": "LEAKCANARY-extra"})
    requests_mock.get(RESULT_URL, content=PNG)
    ApikleyHook().download_result(RESULT_URL, str(tmp_path / "out.png"))
    sent = requests_mock.last_request.headers
    assert "Authorization" not in sent
    assert not any("LEAKCANARY" in str(value) for value in sent.values())


def test_an_upload_file_name_is_checked_like_its_folder(requests_mock, tmp_path):
    image = tmp_path / "shoe.png"
    image.write_bytes(PNG)
    for name in ("../../escape.png", "a/b.png", "..", "bad\nname.png"):
        with pytest.raises(ApikleyInputError, match="file_name="):
            ApikleyHook().upload_file(image, "catalog", file_name=name)
    assert requests_mock.call_count == 0


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


def test_a_bogus_charset_is_a_bad_response_in_the_blocking_client(requests_mock):
    requests_mock.get(
        RECORD_URL,
        content=json.dumps(record("success")).encode(),
        headers={"Content-Type": "application/json; charset=no-such-charset"},
    )
    with pytest.raises(ApikleyBadResponseError):
        ApikleyHook(retry_policy=RetryPolicy(attempts=1)).get_task(TASK_ID)


def test_a_huge_message_is_shortened_in_the_error(requests_mock):
    requests_mock.get(RECORD_URL, json=envelope(None, code=500, msg="x" * 100_000))
    with pytest.raises(ApikleyError) as excinfo:
        ApikleyHook(retry_policy=RetryPolicy(attempts=1)).get_task(TASK_ID)
    assert len(str(excinfo.value)) < 1000


# ---- wall-clock limits ---------------------------------------------------------------------------


@contextmanager
def trickling_server(headers_first: bool, interval: float = 1.0, seconds: float = 12.0) -> Iterator[str]:
    """A loopback HTTP server that answers one byte per ``interval``, for at most ``seconds``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(seconds)
    answer = json.dumps(record("success")).encode()
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
def test_a_trickling_answer_fails_a_blocking_call_within_twice_its_timeout(monkeypatch, headers_first):
    with trickling_server(headers_first) as url:
        apikley_connection(monkeypatch, host=url, timeout=2)
        hook = ApikleyHook(retry_policy=RetryPolicy(attempts=1))
        started = time.monotonic()
        with pytest.raises(ApikleyConnectionError, match="No complete answer within 2 s"):
            hook.get_task(TASK_ID)
        assert time.monotonic() - started < 4


def test_a_trickling_result_fails_a_download_within_twice_the_timeout(monkeypatch, tmp_path):
    with trickling_server(headers_first=True) as url:
        apikley_connection(monkeypatch, host=url, timeout=2)
        started = time.monotonic()
        with pytest.raises(ApikleyConnectionError, match="No complete answer within 2 s"):
            ApikleyHook(retry_policy=RetryPolicy(attempts=1)).download_result(f"{url}/r.png", str(tmp_path / "r.png"))
        assert time.monotonic() - started < 4
    assert list(tmp_path.iterdir()) == []
