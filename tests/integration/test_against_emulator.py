"""The provider's hook, trigger, operator and sensor against the emulator, over real HTTP."""

from __future__ import annotations

import hashlib
import json
from unittest import mock

import pytest

from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_provider_qwen.emulator import EmulatorSettings, run_emulator
from airflow_provider_qwen.exceptions import (
    ApikleyAuthError,
    ApikleyBadResponseError,
    ApikleyConnectionError,
    ApikleyInputError,
    ApikleyInsufficientCreditsError,
    ApikleyMaintenanceError,
    ApikleyNotFoundError,
    ApikleyRateLimitError,
    ApikleyServerError,
    ApikleyTaskFailedError,
    ApikleyValidationError,
)
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.hooks.retries import RetryPolicy
from airflow_provider_qwen.operators.qwen import QwenImageToImageOperator
from airflow_provider_qwen.sensors.apikley import ApikleyTaskSensor
from airflow_provider_qwen.triggers.apikley import ApikleyTaskTrigger
from tests.conftest import API_KEY, OPERATOR_KINDS, edit_operator
from tests.emulator.conftest import png

pytestmark = pytest.mark.integration
MODEL = "qwen/image-to-image"


@pytest.fixture
def emulator(monkeypatch):
    settings = EmulatorSettings(api_keys=[API_KEY], latency=(0.05, 0.05, 0.1), random_seed=3)
    with run_emulator(settings) as running:
        monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", running.airflow_connection())
        yield running


def faults(emulator, endpoint: str, **rates) -> None:
    """Inject faults into one endpoint from now on."""
    emulator.state.settings = EmulatorSettings.model_validate(
        {**emulator.state.settings.model_dump(), "faults": {endpoint: rates}}
    )


@pytest.fixture
def hook(emulator) -> ApikleyHook:
    return ApikleyHook(retry_policy=RetryPolicy(attempts=4))


@pytest.fixture
def image_url(hook) -> str:
    return hook.upload_file(png("#2c7fb8"), "tests", file_name="source.png")


def test_submit_wait_and_store_a_real_edit(hook, image_url, tmp_path):
    task_id = hook.create_task(MODEL, {"prompt": "sepia", "image_url": image_url, "seed": 5})
    operator_record = None
    while operator_record is None or not operator_record.state.is_terminal:
        operator_record = hook.get_task(task_id)
    (url,) = operator_record.result_urls
    stored = hook.download_result(url, f"file://{tmp_path}/out.png")
    assert stored.sha256 == hashlib.sha256((tmp_path / "out.png").read_bytes()).hexdigest()
    assert stored.content_type == "image/png"


@pytest.mark.parametrize("upload", ["upload_file", "upload_base64"])
def test_both_in_memory_upload_kinds_give_a_url_the_emulator_serves(hook, upload):
    content = png("#f1c40f")
    url = getattr(hook, upload)(content, "tests", file_name=f"{upload}.png")
    assert hook.download_session.get(url).content == content


def test_upload_from_url(hook, image_url):
    url = hook.upload_from_url(image_url, "tests", file_name="copy.png")
    assert hook.download_session.get(url).content == hook.download_session.get(image_url).content


def test_wrong_key(emulator, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_APIKLEY_DEFAULT",
        json.dumps({"conn_type": "apikley", "host": emulator.base_url, "password": "nope"}),
    )
    with pytest.raises(ApikleyAuthError):
        ApikleyHook().get_credits()
    ok, message = ApikleyHook().test_connection()
    assert not ok and "401" in message


def test_the_service_validation_error_names_the_field(hook, image_url):
    with pytest.raises(ApikleyValidationError, match=r"input\.strength"):
        hook.create_task(MODEL, {"prompt": "x", "image_url": image_url, "strength": 7})


def test_out_of_credits(emulator, hook, image_url):
    emulator.state.credits = 0
    with pytest.raises(ApikleyInsufficientCreditsError):
        hook.create_task(MODEL, {"prompt": "x", "image_url": image_url})


def test_unknown_task(hook):
    with pytest.raises(ApikleyNotFoundError):
        hook.get_task("0" * 32)


def test_create_is_retried_through_429_and_counted_once(emulator, hook, image_url):
    faults(emulator, "createTask", rate_limited=0.5, retry_after=0)
    ids = {hook.create_task(MODEL, {"prompt": "x", "image_url": image_url}) for _ in range(6)}
    assert len(ids) == 6
    assert emulator.state.accepted_creates == 6


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("server_error", ApikleyServerError),
        ("maintenance", ApikleyMaintenanceError),
        ("html", ApikleyServerError),
        ("malformed", ApikleyBadResponseError),
        ("drop", ApikleyConnectionError),
    ],
)
def test_create_is_never_retried_when_the_request_may_have_been_taken(emulator, hook, image_url, fault, error):
    faults(emulator, "createTask", **{fault: 1.0})
    with pytest.raises(error):
        hook.create_task(MODEL, {"prompt": "x", "image_url": image_url})
    assert sum(count for name, count in emulator.state.stats.items() if name.startswith("createTask")) == 1


@pytest.mark.parametrize("fault", ["server_error", "maintenance", "html", "malformed", "drop", "rate_limited"])
def test_status_queries_ride_out_transient_faults(emulator, hook, image_url, fault):
    task_id = hook.create_task(MODEL, {"prompt": "x", "image_url": image_url})
    faults(emulator, "recordInfo", **{fault: 0.5, "retry_after": 0})
    for _ in range(8):
        assert hook.get_task(task_id).task_id == task_id
    assert any(name.startswith("recordInfo fault:") for name in emulator.state.stats)


async def test_trigger_against_the_emulator(emulator, hook, image_url):
    task_id = hook.create_task(MODEL, {"prompt": "sepia", "image_url": image_url})
    trigger = ApikleyTaskTrigger(apikley_task_id=task_id, poll_interval=0.05)
    events = [event.payload async for event in trigger.run()]
    assert [event["status"] for event in events] == ["success"]
    assert events[0]["result_urls"][0].startswith(emulator.base_url)


async def test_trigger_reports_a_failed_generation(emulator, hook, image_url):
    emulator.state.settings = emulator.state.settings.model_copy(update={"fail_fraction": 1.0})
    task_id = hook.create_task(MODEL, {"prompt": "sepia", "image_url": image_url})
    (event,) = [event.payload async for event in ApikleyTaskTrigger(apikley_task_id=task_id, poll_interval=0.05).run()]
    assert (event["status"], event["fail_code"]) == ("failed", "501")


@pytest.mark.parametrize("kind", OPERATOR_KINDS)
def test_operator_defers_then_completes_from_the_trigger_event(emulator, image_url, tmp_path, kind):
    import asyncio

    operator = edit_operator(
        kind,
        task_id="edit",
        prompt="warm",
        image_url=image_url,
        seed=1,
        deferrable=True,
        output_path=f"file://{tmp_path}",
    )
    context = {"ti": mock.Mock()}
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)

    async def first_event():
        async for event in deferred.value.trigger.run():
            return event.payload

    result = operator.execute_complete(context, asyncio.run(first_event()))
    (stored,) = result["stored"]
    assert stored["uri"].startswith(f"file://{tmp_path}/")
    assert emulator.state.accepted_creates == 1


def test_sensor_poke_mode_against_the_emulator(emulator, hook, image_url):
    emulator.state.settings = emulator.state.settings.model_copy(update={"fail_fraction": 1.0})
    task_id = hook.create_task(MODEL, {"prompt": "sepia", "image_url": image_url})
    sensor = ApikleyTaskSensor(task_id="wait", apikley_task_id=task_id, poke_interval=0.05, timeout=10)
    with pytest.raises(Exception, match=f"{task_id} failed: failCode=501"):
        sensor.execute({"ti": mock.Mock()})


def test_a_download_that_breaks_leaves_no_file(emulator, hook, image_url, tmp_path):
    faults(emulator, "files", drop=1.0)
    with pytest.raises(ApikleyConnectionError):
        hook.download_result(image_url, f"file://{tmp_path}/x.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", OPERATOR_KINDS)
def test_failed_generation_through_the_operator(emulator, image_url, kind):
    emulator.state.settings = emulator.state.settings.model_copy(update={"fail_fraction": 1.0})
    operator = edit_operator(kind, task_id="edit", prompt="x", image_url=image_url, poll_interval=0.05)
    with pytest.raises(ApikleyTaskFailedError, match="failCode=501"):
        operator.execute({"ti": mock.Mock()})


def test_rate_limit_error_surfaces_after_the_policy_is_exhausted(emulator, image_url):
    faults(emulator, "createTask", rate_limited=1.0, retry_after=0)
    with pytest.raises(ApikleyRateLimitError):
        ApikleyHook(retry_policy=RetryPolicy(attempts=3)).create_task(MODEL, {"prompt": "x", "image_url": image_url})
    assert emulator.state.stats["createTask fault:rate_limited"] == 3
    assert emulator.state.accepted_creates == 0


BAD_INPUTS = [
    ("prompt", ""),
    ("prompt", "p" * 5001),
    ("image_url", "ftp://example.org/a.png"),
    ("strength", -0.01),
    ("strength", 1.01),
    ("strength", 0.555),
    ("strength", "high"),
    ("output_format", "gif"),
    ("acceleration", "max"),
    ("negative_prompt", "n" * 501),
    ("seed", 1.5),
    ("num_inference_steps", 1),
    ("num_inference_steps", 251),
    ("num_inference_steps", 2.5),
    ("guidance_scale", -0.1),
    ("guidance_scale", 20.1),
    ("guidance_scale", 1.25),
    ("enable_safety_checker", "perhaps"),
]


@pytest.mark.parametrize(("field", "value"), BAD_INPUTS)
def test_bad_input_never_reaches_apikley(emulator, image_url, field, value):
    arguments = {"task_id": "edit", "prompt": "x", "image_url": image_url, field: value}
    with pytest.raises(ApikleyInputError) as excinfo:
        QwenImageToImageOperator(**arguments).execute({"ti": mock.Mock()})
    assert f"{field}=" in str(excinfo.value)
    assert not any(name.startswith("createTask") for name in emulator.state.stats)
