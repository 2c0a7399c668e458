from __future__ import annotations

import json

import pytest
import requests

from airflow.providers.http.hooks.http import TCPKeepAliveAdapter

from airflow_provider_qwen import __version__
from airflow_provider_qwen.exceptions import (
    ApikleyAuthError,
    ApikleyBadResponseError,
    ApikleyConfigurationError,
    ApikleyConnectionError,
    ApikleyError,
    ApikleyFeatureDisabledError,
    ApikleyGenerationFailedError,
    ApikleyInputError,
    ApikleyInsufficientCreditsError,
    ApikleyMaintenanceError,
    ApikleyNotFoundError,
    ApikleyRateLimitError,
    ApikleyServerError,
    ApikleySubKeyLimitError,
    ApikleyUpstreamTimeoutError,
    ApikleyValidationError,
)
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.hooks.retries import RetryPolicy
from airflow_provider_qwen.models import TaskState
from tests.conftest import API_KEY, BASE_URL, REAL_RETRY_WAIT
from tests.unit.fixtures import IMAGE_URL, TASK_ID, created, envelope, record

CREATE_URL = f"{BASE_URL}/api/v1/jobs/createTask"
RECORD_URL = f"{BASE_URL}/api/v1/jobs/recordInfo"
CREDIT_URL = f"{BASE_URL}/api/v1/chat/credit"
INPUT = {"prompt": "sepia", "image_url": IMAGE_URL}

ERROR_CODES = [
    (400, ApikleyError),
    (401, ApikleyAuthError),
    (402, ApikleyInsufficientCreditsError),
    (404, ApikleyNotFoundError),
    (408, ApikleyUpstreamTimeoutError),
    (422, ApikleyValidationError),
    (429, ApikleyRateLimitError),
    (433, ApikleySubKeyLimitError),
    (455, ApikleyMaintenanceError),
    (500, ApikleyServerError),
    (501, ApikleyGenerationFailedError),
    (505, ApikleyFeatureDisabledError),
]


@pytest.fixture
def hook() -> ApikleyHook:
    return ApikleyHook(retry_policy=RetryPolicy(attempts=3))


def set_connection(monkeypatch, **fields):
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", json.dumps({"conn_type": "apikley", **fields}))


def test_create_task_sends_model_input_and_callback_with_bearer_and_user_agent(hook, requests_mock):
    requests_mock.post(CREATE_URL, json=created())
    assert hook.create_task("qwen/image-to-image", INPUT, callback_url="https://example.org/cb") == TASK_ID
    sent = requests_mock.last_request
    assert sent.json() == {"model": "qwen/image-to-image", "input": INPUT, "callBackUrl": "https://example.org/cb"}
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["User-Agent"] == f"airflow-provider-qwen/{__version__}"


def test_create_task_without_callback_sends_no_callback_field(hook, requests_mock):
    requests_mock.post(CREATE_URL, json=envelope({"task_id": "x1"}))
    assert hook.create_task("qwen/image-to-image", INPUT) == "x1"
    assert "callBackUrl" not in requests_mock.last_request.json()


def test_get_task_parses_the_record(hook, requests_mock):
    requests_mock.get(RECORD_URL, json=record("success"))
    parsed = hook.get_task(TASK_ID)
    assert parsed.state is TaskState.SUCCESS
    assert requests_mock.last_request.qs == {"taskid": [TASK_ID.lower()]}


def test_one_session_serves_every_call_of_a_hook(hook, requests_mock):
    requests_mock.get(CREDIT_URL, json=envelope(3))
    hook.get_credits()
    first = hook.session
    hook.get_credits()
    assert hook.session is first


def test_tcp_keep_alive_is_set_up_for_blocking_calls_only(hook, requests_mock):
    # a trigger's hook only polls through aiohttp: it should not carry a requests connection pool
    assert hook.keep_alive_adapter is None
    assert "session" not in vars(hook)
    requests_mock.get(CREDIT_URL, json=envelope(3))
    hook.get_credits()
    assert isinstance(hook.session.adapters["https://"], TCPKeepAliveAdapter)


@pytest.mark.parametrize(("code", "error_class"), ERROR_CODES)
@pytest.mark.parametrize("http_status", [200, "same"])
def test_every_body_code_maps_to_its_exception(hook, requests_mock, code, error_class, http_status):
    status = code if http_status == "same" and code < 600 else 200
    requests_mock.post(CREATE_URL, json={"code": code, "message": f"problem {code}"}, status_code=status)
    with pytest.raises(error_class, match=f"problem {code}") as excinfo:
        hook.create_task("qwen/image-to-image", INPUT)
    assert excinfo.value.code == code
    assert type(excinfo.value) is error_class


def test_unknown_task_is_not_found(hook, requests_mock):
    requests_mock.get(RECORD_URL, json=envelope(None, code=422, msg="recordInfo is null"))
    with pytest.raises(ApikleyNotFoundError, match="recordInfo is null"):
        hook.get_task("nope")
    assert requests_mock.call_count == 1


def test_http_error_status_with_success_body_is_an_error(hook, requests_mock):
    requests_mock.get(CREDIT_URL, json=envelope(1), status_code=403)
    with pytest.raises(ApikleyError, match="code 403"):
        ApikleyHook(retry_policy=RetryPolicy(attempts=1)).get_credits()


def test_html_error_page_becomes_a_clear_error_with_status_and_excerpt(hook, requests_mock):
    page = "<html><head><title>502 Bad Gateway</title></head><body>" + "x" * 5000 + "</body></html>"
    requests_mock.post(CREATE_URL, text=page, status_code=502)
    with pytest.raises(ApikleyServerError) as excinfo:
        hook.create_task("qwen/image-to-image", INPUT)
    message = str(excinfo.value)
    assert "HTTP 502" in message
    assert "502 Bad Gateway" in message
    assert len(message) < 400


def test_non_json_success_is_a_bad_response(hook, requests_mock):
    requests_mock.get(CREDIT_URL, text="OK")
    with pytest.raises(ApikleyBadResponseError, match="not its JSON envelope"):
        hook.get_credits()
    assert requests_mock.call_count == 3  # malformed answers to reads are retried


@pytest.mark.parametrize("code", [429, 455, 500, 503])
def test_reads_retry_transient_codes_then_succeed(hook, requests_mock, code):
    requests_mock.get(RECORD_URL, [{"json": envelope(None, code=code)}, {"json": record("queuing")}])
    assert hook.get_task(TASK_ID).state is TaskState.QUEUING
    assert requests_mock.call_count == 2


def test_reads_give_up_after_the_policy_attempts(hook, requests_mock):
    requests_mock.get(RECORD_URL, json=envelope(None, code=500, msg="boom"))
    with pytest.raises(ApikleyServerError, match="boom"):
        hook.get_task(TASK_ID)
    assert requests_mock.call_count == 3


@pytest.mark.parametrize("code", [400, 401, 402, 422, 433, 505])
def test_reads_do_not_retry_permanent_errors(hook, requests_mock, code):
    requests_mock.get(RECORD_URL, json=envelope(None, code=code))
    with pytest.raises(ApikleyError):
        hook.get_task(TASK_ID)
    assert requests_mock.call_count == 1


@pytest.mark.parametrize("code", [500, 455, 502])
def test_create_task_is_not_retried_when_the_service_may_have_taken_it(hook, requests_mock, code):
    requests_mock.post(CREATE_URL, json=envelope(None, code=code))
    with pytest.raises(ApikleyError):
        hook.create_task("qwen/image-to-image", INPUT)
    assert requests_mock.call_count == 1


def test_create_task_is_not_retried_after_a_read_timeout(hook, requests_mock):
    requests_mock.post(CREATE_URL, exc=requests.ReadTimeout("read timed out"))
    with pytest.raises(ApikleyConnectionError):
        hook.create_task("qwen/image-to-image", INPUT)
    assert requests_mock.call_count == 1


def test_create_task_is_retried_on_429_because_the_request_was_dropped(hook, requests_mock):
    requests_mock.post(CREATE_URL, [{"json": envelope(None, code=429)}, {"json": created()}])
    assert hook.create_task("qwen/image-to-image", INPUT) == TASK_ID
    assert requests_mock.call_count == 2


def test_create_task_is_retried_when_the_connection_never_opened(hook, requests_mock):
    requests_mock.post(CREATE_URL, [{"exc": requests.ConnectTimeout("connect timed out")}, {"json": created()}])
    assert hook.create_task("qwen/image-to-image", INPUT) == TASK_ID
    assert requests_mock.call_count == 2


def test_connection_refused_is_retried_for_creates(monkeypatch):
    set_connection(monkeypatch, host="http://127.0.0.1:9", password=API_KEY)  # nothing listens on port 9
    hook = ApikleyHook(retry_policy=RetryPolicy(attempts=2), timeout=2)
    with pytest.raises(ApikleyConnectionError) as excinfo:
        hook.create_task("qwen/image-to-image", INPUT)
    assert excinfo.value.request_not_sent


def test_backoff_grows_with_jitter_and_stays_under_the_cap():
    policy = RetryPolicy(initial_wait=1.0, max_wait=8.0)
    error = ApikleyServerError("boom")
    waits = {n: [REAL_RETRY_WAIT(policy, n, error) for _ in range(200)] for n in (1, 3, 6)}
    assert all(0 <= wait <= 2 for wait in waits[1])
    assert all(0 <= wait <= 8 for wait in waits[3] + waits[6])
    assert max(waits[3]) > max(waits[1])
    assert len(set(waits[6])) > 100  # jittered, so many callers do not retry in step


def test_retry_after_is_honoured_over_a_shorter_backoff():
    policy = RetryPolicy(initial_wait=0.001, max_wait=0.002)
    error = ApikleyRateLimitError("slow down", code=429, retry_after=7.0)
    assert REAL_RETRY_WAIT(policy, 1, error) == 7.0


def test_retry_after_header_reaches_the_exception(requests_mock):
    requests_mock.post(CREATE_URL, json=envelope(None, code=429), headers={"Retry-After": "12"})
    with pytest.raises(ApikleyRateLimitError) as excinfo:
        ApikleyHook(retry_policy=RetryPolicy(attempts=1)).create_task("qwen/image-to-image", INPUT)
    assert excinfo.value.retry_after == 12.0


def test_get_credits_accepts_fractions(hook, requests_mock):
    requests_mock.get(CREDIT_URL, json=envelope(99.5))
    assert hook.get_credits() == 99.5


def test_test_connection_reports_success_without_the_key(hook, requests_mock):
    requests_mock.get(CREDIT_URL, json=envelope(42))
    ok, message = hook.test_connection()
    assert ok
    assert "42 credits" in message
    assert API_KEY not in message


def test_test_connection_reports_a_wrong_key_readably(hook, requests_mock):
    requests_mock.get(CREDIT_URL, json=envelope(None, code=401, msg="invalid api key"))
    ok, message = hook.test_connection()
    assert not ok
    assert "401" in message
    assert "invalid api key" in message
    assert API_KEY not in message


def test_empty_password_is_a_clear_error_before_any_request(monkeypatch, requests_mock):
    set_connection(monkeypatch, host=BASE_URL)
    with pytest.raises(ApikleyConfigurationError, match="has no API key"):
        ApikleyHook().get_credits()
    assert requests_mock.call_count == 0


@pytest.mark.parametrize("host", ["ftp://files.example.org", "http://", "https://host:notaport"])
def test_host_that_is_not_an_http_url_is_a_clear_error(monkeypatch, requests_mock, host):
    set_connection(monkeypatch, host=host, password=API_KEY)
    with pytest.raises(ApikleyConfigurationError, match="is not an http\\(s\\) base URL"):
        ApikleyHook().get_credits()
    assert requests_mock.call_count == 0


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (None, "https://api.apikley.ru"),
        ("api.apikley.ru", "https://api.apikley.ru"),
        ("http://127.0.0.1:8765/", "http://127.0.0.1:8765"),
    ],
)
def test_base_url_from_host(monkeypatch, requests_mock, host, expected):
    set_connection(monkeypatch, host=host, password=API_KEY)
    requests_mock.get(f"{expected}/api/v1/chat/credit", json=envelope(1))
    assert ApikleyHook().get_credits() == 1


def test_extras_are_settings_not_headers(monkeypatch, requests_mock):
    set_connection(
        monkeypatch,
        host=BASE_URL,
        password=API_KEY,
        extra={"timeout": 5, "upload_base_url": "https://upload.example.org"},
    )
    requests_mock.get(CREDIT_URL, json=envelope(1))
    ApikleyHook().get_credits()
    sent = requests_mock.last_request
    assert "upload_base_url" not in sent.headers
    assert sent.timeout == 5


@pytest.mark.parametrize("task_id", ["", "   ", None])
def test_get_task_refuses_an_empty_id_before_any_request(hook, requests_mock, task_id):
    with pytest.raises(ApikleyInputError, match="apikley_task_id"):
        hook.get_task(task_id)
    assert requests_mock.call_count == 0


def test_no_key_in_repr_of_auth_or_errors(hook, requests_mock):
    requests_mock.get(CREDIT_URL, json=envelope(None, code=401))
    with pytest.raises(ApikleyAuthError) as excinfo:
        hook.get_credits()
    assert API_KEY not in repr(hook.session.auth)
    assert API_KEY not in str(excinfo.value)
    assert API_KEY not in repr(excinfo.value)


def test_a_huge_answer_is_refused_not_read_whole(hook, requests_mock):
    huge = '{"code": 200, "msg": "success", "data": "' + "x" * (2 * 1024 * 1024) + '"}'
    requests_mock.get(CREDIT_URL, text=huge)
    with pytest.raises(ApikleyBadResponseError, match="larger than 1048576 bytes"):
        ApikleyHook(retry_policy=RetryPolicy(attempts=1)).get_credits()
