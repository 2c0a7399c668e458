from __future__ import annotations

import json

import pytest
import requests

from airflow.providers.http.hooks.http import TCPKeepAliveAdapter

from airflow_provider_qwen import __version__
from airflow_provider_qwen.emulator.script import ScriptedAnswer, created, envelope, json_answer
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
from tests.conftest import API_KEY, REAL_RETRY_WAIT

MODEL = "qwen/image-to-image"
#: A task id no one created: the answers about it are scripted.
TASK_ID = "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e"
#: A key the emulator does not know, as a user who mistyped theirs would send it.
WRONG_KEY = "sk-test-WRONGKEY-fedcba9876543210"

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
def hook(apikley) -> ApikleyHook:
    return ApikleyHook(retry_policy=RetryPolicy(attempts=3))


@pytest.fixture
def edit_input(source_image_url) -> dict[str, str]:
    return {"prompt": "sepia", "image_url": source_image_url}


def set_connection(monkeypatch, **fields):
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", json.dumps({"conn_type": "apikley", **fields}))


def test_create_task_sends_model_input_and_callback_with_bearer_and_user_agent(hook, apikley, edit_input):
    callback_url = f"{apikley.base_url}/hooks/edit-done"
    task_id = hook.create_task(MODEL, edit_input, callback_url=callback_url)
    assert list(apikley.state.tasks) == [task_id]
    (sent,) = apikley.seen("createTask")
    assert sent.json() == {"model": MODEL, "input": edit_input, "callBackUrl": callback_url}
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["user-agent"] == f"airflow-provider-qwen/{__version__}"


def test_create_task_without_callback_sends_no_callback_field(hook, apikley, edit_input):
    task_id = hook.create_task(MODEL, edit_input)
    assert list(apikley.state.tasks) == [task_id]
    assert "callBackUrl" not in apikley.seen("createTask")[-1].json()


def test_get_task_parses_the_record(hook, apikley, edit_input):
    task_id = hook.create_task(MODEL, edit_input)
    apikley.wait_until_ended(task_id)
    parsed = hook.get_task(task_id)
    assert parsed.task_id == task_id
    assert parsed.state is TaskState.SUCCESS
    assert apikley.seen("recordInfo")[-1].query == f"taskId={task_id}"


def test_one_session_serves_every_call_of_a_hook(hook):
    hook.get_credits()
    first = hook.session
    hook.get_credits()
    assert hook.session is first


def test_tcp_keep_alive_is_set_up_for_blocking_calls_only(hook):
    # a trigger's hook only polls through aiohttp: it should not carry a requests connection pool
    assert hook.keep_alive_adapter is None
    assert "session" not in vars(hook)
    hook.get_credits()
    assert isinstance(hook.session.adapters["https://"], TCPKeepAliveAdapter)


@pytest.mark.parametrize(("code", "error_class"), ERROR_CODES)
@pytest.mark.parametrize("http_status", [200, "same"])
def test_every_body_code_maps_to_its_exception(hook, apikley, edit_input, code, error_class, http_status):
    status = code if http_status == "same" and code < 600 else 200
    apikley.script("createTask", envelope(code=code, msg=f"problem {code}", status=status, times=None))
    with pytest.raises(error_class, match=f"problem {code}") as excinfo:
        hook.create_task(MODEL, edit_input)
    assert excinfo.value.code == code
    assert type(excinfo.value) is error_class


def test_an_error_message_under_message_rather_than_msg_is_read_too(hook, apikley, edit_input):
    apikley.script("createTask", json_answer({"code": 422, "message": "problem 422"}, times=None))
    with pytest.raises(ApikleyValidationError, match="problem 422"):
        hook.create_task(MODEL, edit_input)


def test_unknown_task_is_not_found_in_plain_words(hook, apikley):
    with pytest.raises(ApikleyNotFoundError) as excinfo:
        hook.get_task("nope")
    assert str(excinfo.value).startswith("Apikley does not know task nope: it was never created with this")
    assert "422" not in str(excinfo.value)  # Apikley's code for "recordInfo is null" only confuses
    assert len(apikley.seen("recordInfo")) == 1


def test_http_error_status_with_success_body_is_an_error(apikley):
    apikley.script("credit", envelope(1, status=403))
    with pytest.raises(ApikleyError, match="code 403"):
        ApikleyHook(retry_policy=RetryPolicy(attempts=1)).get_credits()


def test_html_error_page_becomes_a_clear_error_with_status_and_excerpt(hook, apikley, edit_input):
    page = "<html><head><title>502 Bad Gateway</title></head><body>" + "x" * 5000 + "</body></html>"
    apikley.script("createTask", ScriptedAnswer(page.encode(), status=502, content_type="text/html"))
    with pytest.raises(ApikleyServerError) as excinfo:
        hook.create_task(MODEL, edit_input)
    message = str(excinfo.value)
    assert "HTTP 502" in message
    assert "502 Bad Gateway" in message
    assert len(message) < 400


def test_non_json_success_is_a_bad_response(hook, apikley):
    apikley.script("credit", ScriptedAnswer(b"OK", content_type="text/plain", times=None))
    with pytest.raises(ApikleyBadResponseError, match="not its JSON envelope"):
        hook.get_credits()
    assert len(apikley.seen("credit")) == 3  # malformed answers to reads are retried


@pytest.mark.parametrize("code", [429, 455, 500, 503])
def test_reads_retry_transient_codes_then_succeed(hook, apikley, edit_input, code):
    task_id = hook.create_task(MODEL, edit_input)
    apikley.script("recordInfo", envelope(code=code))
    assert hook.get_task(task_id).task_id == task_id
    assert len(apikley.seen("recordInfo")) == 2


def test_reads_give_up_after_the_policy_attempts(hook, apikley):
    apikley.script("recordInfo", envelope(code=500, msg="boom", times=None))
    with pytest.raises(ApikleyServerError, match="boom"):
        hook.get_task(TASK_ID)
    assert len(apikley.seen("recordInfo")) == 3


@pytest.mark.parametrize("code", [400, 401, 402, 422, 433, 505])
def test_reads_do_not_retry_permanent_errors(hook, apikley, code):
    apikley.script("recordInfo", envelope(code=code, times=None))
    with pytest.raises(ApikleyError):
        hook.get_task(TASK_ID)
    assert len(apikley.seen("recordInfo")) == 1


@pytest.mark.parametrize("code", [500, 455, 502])
def test_create_task_is_not_retried_when_the_service_may_have_taken_it(hook, apikley, edit_input, code):
    apikley.script("createTask", envelope(code=code, times=None))
    with pytest.raises(ApikleyError):
        hook.create_task(MODEL, edit_input)
    assert len(apikley.seen("createTask")) == 1


def test_create_task_is_not_retried_after_a_read_timeout(apikley, edit_input):
    apikley.script("createTask", created(TASK_ID, delay=0.5))  # taken, but answered too late
    hook = ApikleyHook(retry_policy=RetryPolicy(attempts=3), timeout=0.1)
    with pytest.raises(ApikleyConnectionError):
        hook.create_task(MODEL, edit_input)
    assert len(apikley.seen("createTask")) == 1


def test_create_task_is_retried_on_429_because_the_request_was_dropped(hook, apikley, edit_input):
    apikley.script("createTask", envelope(code=429, msg="Too many requests, the request was dropped"))
    task_id = hook.create_task(MODEL, edit_input)
    assert list(apikley.state.tasks) == [task_id]
    assert len(apikley.seen("createTask")) == 2


def test_create_task_is_retried_when_the_connection_never_opened(hook, apikley, edit_input, monkeypatch):
    # No answer can stand for a connection that never opened: the first try fails before it leaves.
    adapter = hook.session.get_adapter(apikley.base_url)
    real_send = adapter.send
    tries = []

    def send(request, **kwargs):
        tries.append(request.url)
        if len(tries) == 1:
            raise requests.ConnectTimeout("connect timed out")
        return real_send(request, **kwargs)

    monkeypatch.setattr(adapter, "send", send)
    task_id = hook.create_task(MODEL, edit_input)
    assert list(apikley.state.tasks) == [task_id]
    assert len(tries) == 2
    assert len(apikley.seen("createTask")) == 1  # the service saw the second try only


def test_connection_refused_is_retried_for_creates(monkeypatch):
    set_connection(monkeypatch, host="http://127.0.0.1:9", password=API_KEY)  # nothing listens on port 9
    hook = ApikleyHook(retry_policy=RetryPolicy(attempts=2), timeout=2)
    with pytest.raises(ApikleyConnectionError) as excinfo:
        hook.create_task(MODEL, {"prompt": "sepia", "image_url": "https://files.example.org/in/shoe.png"})
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


def test_retry_after_header_reaches_the_exception(apikley, edit_input):
    apikley.script("createTask", envelope(code=429, headers={"Retry-After": "12"}))
    with pytest.raises(ApikleyRateLimitError) as excinfo:
        ApikleyHook(retry_policy=RetryPolicy(attempts=1)).create_task(MODEL, edit_input)
    assert excinfo.value.retry_after == 12.0


def test_get_credits_accepts_fractions(hook, apikley):
    apikley.state.credits = 99.5
    assert hook.get_credits() == 99.5


def test_test_connection_reports_success_without_the_key(hook, apikley):
    apikley.state.credits = 42
    ok, message = hook.test_connection()
    assert ok
    assert "42 credits" in message
    assert API_KEY not in message


def test_test_connection_reports_a_wrong_key_readably(apikley, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", apikley.airflow_connection(api_key=WRONG_KEY))
    ok, message = ApikleyHook(retry_policy=RetryPolicy(attempts=3)).test_connection()
    assert not ok
    assert "401" in message
    assert "the API key is missing or invalid" in message
    assert WRONG_KEY not in message


def test_a_refused_key_names_the_connection_and_where_it_was_read_from(apikley, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_STAGING", apikley.airflow_connection(api_key=WRONG_KEY))
    with pytest.raises(ApikleyAuthError) as excinfo:
        ApikleyHook("apikley_staging").get_credits()
    assert str(excinfo.value).endswith(
        "the API key is missing or invalid. Check the API key (password) of connection 'apikley_staging', "
        "read from environment variable AIRFLOW_CONN_APIKLEY_STAGING."
    )
    assert WRONG_KEY not in str(excinfo.value)


async def test_a_refused_key_names_the_connection_in_the_async_client_too(apikley, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", apikley.airflow_connection(api_key=WRONG_KEY))
    hook = ApikleyHook(retry_policy=RetryPolicy(attempts=1))
    try:
        with pytest.raises(ApikleyAuthError, match="connection 'apikley_default', read from environment variable"):
            await hook.aget_task("3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e")
    finally:
        await hook.aclose()


def test_a_connection_from_the_database_or_a_secrets_backend_is_named_so(monkeypatch):
    from airflow_provider_qwen.hooks.connection import connection_source

    monkeypatch.delenv("AIRFLOW_CONN_APIKLEY_OTHER", raising=False)
    assert connection_source("apikley_other") == "the metadata database (Admin → Connections)"
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", "airflow.providers.amazon.aws.secrets.SecretsManagerBackend")
    assert connection_source("apikley_other") == (
        "the secrets backend SecretsManagerBackend, else the metadata database (Admin → Connections)"
    )


def test_empty_password_is_a_clear_error_before_any_request(apikley, monkeypatch):
    set_connection(monkeypatch, host=apikley.base_url)
    with pytest.raises(ApikleyConfigurationError, match="has no API key"):
        ApikleyHook().get_credits()
    assert apikley.seen() == []


@pytest.mark.parametrize("host", ["ftp://{address}", "http://", "https://{hostname}:notaport"])
def test_host_that_is_not_an_http_url_is_a_clear_error(apikley, monkeypatch, host):
    address = apikley.base_url.split("://", 1)[1]
    set_connection(monkeypatch, host=host.format(address=address, hostname=address.split(":")[0]), password=API_KEY)
    with pytest.raises(ApikleyConfigurationError, match="is not an http\\(s\\) base URL"):
        ApikleyHook().get_credits()
    assert apikley.seen() == []


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (None, "https://api.apikley.ru"),
        ("api.apikley.ru", "https://api.apikley.ru"),
        ("http://127.0.0.1:8765/", "http://127.0.0.1:8765"),
    ],
)
def test_base_url_from_host(monkeypatch, host, expected):
    set_connection(monkeypatch, host=host, password=API_KEY)
    assert ApikleyHook().settings.base_url == expected


@pytest.mark.parametrize(
    ("host", "extra", "expected"),
    [
        (None, {}, "https://api.apikley.ru/file-upload"),
        ("api.apikley.ru", {}, "https://api.apikley.ru/file-upload"),
        ("http://127.0.0.1:8089/", {}, "http://127.0.0.1:8089/file-upload"),
        ("https://gateway.example.org/apikley", {}, "https://gateway.example.org/apikley/file-upload"),
        ("http://127.0.0.1:8089", {"upload_base_url": "https://upload.example.org/"}, "https://upload.example.org"),
        (None, {"upload_base_url": "https://upload.example.org"}, "https://upload.example.org"),
        ("http://127.0.0.1:8089", {"upload_base_url": ""}, "http://127.0.0.1:8089/file-upload"),
    ],
)
def test_upload_base_url_is_the_extra_else_derived_from_the_host(monkeypatch, host, extra, expected):
    set_connection(monkeypatch, host=host, password=API_KEY, extra=extra)
    assert ApikleyHook().upload_base_url == expected


def test_upload_base_url_that_is_not_http_is_a_clear_error(monkeypatch):
    set_connection(monkeypatch, host="http://127.0.0.1:8089", password=API_KEY, extra={"upload_base_url": "ftp://x"})
    with pytest.raises(ApikleyConfigurationError, match="extra upload_base_url='ftp://x': must be an http"):
        _ = ApikleyHook().upload_base_url


def test_a_connection_to_the_emulator_without_upload_base_url_uploads_to_the_emulator(apikley, monkeypatch):
    set_connection(monkeypatch, host=apikley.base_url, password=API_KEY)
    hook = ApikleyHook(retry_policy=RetryPolicy(attempts=1))
    assert hook.upload_base_url == apikley.upload_base_url  # not the public upload API
    url = hook.upload_file(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "catalog", file_name="shoe.png")
    [sent] = apikley.seen("upload")
    assert f"{apikley.base_url}{sent.path}" == f"{apikley.upload_base_url}/api/file-stream-upload"
    assert url.startswith(f"{apikley.base_url}/files/catalog/shoe-")


def test_calls_go_to_the_host_given_with_a_trailing_slash(apikley, monkeypatch):
    set_connection(monkeypatch, host=f"{apikley.base_url}/", password=API_KEY)
    assert ApikleyHook().get_credits() == 1000
    assert [request.path for request in apikley.seen()] == ["/api/v1/chat/credit"]


def test_extras_are_settings_not_headers(apikley, monkeypatch):
    set_connection(
        monkeypatch,
        host=apikley.base_url,
        password=API_KEY,
        extra={"timeout": 0.1, "upload_base_url": "https://upload.example.org"},
    )
    hook = ApikleyHook(retry_policy=RetryPolicy(attempts=1))
    hook.get_credits()
    assert "upload_base_url" not in apikley.seen("credit")[0].headers
    apikley.script("credit", envelope(1, delay=0.5))
    with pytest.raises(ApikleyConnectionError):  # the extra's timeout limits the call
        hook.get_credits()


@pytest.mark.parametrize("task_id", ["", "   ", None])
def test_get_task_refuses_an_empty_id_before_any_request(hook, apikley, task_id):
    with pytest.raises(ApikleyInputError, match="apikley_task_id"):
        hook.get_task(task_id)
    assert apikley.seen() == []


def test_no_key_in_repr_of_auth_or_errors(apikley, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", apikley.airflow_connection(api_key=WRONG_KEY))
    hook = ApikleyHook(retry_policy=RetryPolicy(attempts=3))
    with pytest.raises(ApikleyAuthError) as excinfo:
        hook.get_credits()
    assert WRONG_KEY not in repr(hook.session.auth)
    assert WRONG_KEY not in str(excinfo.value)
    assert WRONG_KEY not in repr(excinfo.value)


def test_a_huge_answer_is_refused_not_read_whole(apikley):
    huge = '{"code": 200, "msg": "success", "data": "' + "x" * (2 * 1024 * 1024) + '"}'
    apikley.script("credit", ScriptedAnswer(huge.encode()))
    with pytest.raises(ApikleyBadResponseError, match="larger than 1048576 bytes"):
        ApikleyHook(retry_policy=RetryPolicy(attempts=1)).get_credits()
