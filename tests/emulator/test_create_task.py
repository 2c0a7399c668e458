"""createTask: keys, the published schema, credits and the rate limit."""

from __future__ import annotations

import pytest

from airflow_provider_qwen.emulator import RunningEmulator, run_emulator
from tests.emulator.conftest import AUTH, MODEL, Client


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic ZW11bGF0b3ItdGVzdC1rZXk6"}, {"Authorization": ""}],
)
def test_missing_or_unknown_key_is_401_and_creates_nothing(client, headers):
    answer = client.create(headers=headers, image_url="http://127.0.0.1/a.png")
    assert answer.status_code == 200  # the body's code is the one that counts
    assert answer.json()["code"] == 401
    assert client.stats()["accepted_create_tasks"] == 0


def test_the_scheme_is_case_insensitive(client):
    answer = client.create(headers={"Authorization": AUTH["Authorization"].replace("Bearer", "bearer")})
    assert answer.json()["code"] == 200


def test_an_accepted_task_has_a_32_hex_id_and_an_equal_record_id(client):
    answer = client.create().json()
    assert (answer["code"], answer["msg"]) == (200, "success")
    task_id = answer["data"]["taskId"]
    assert len(task_id) == 32 and task_id == task_id.lower() and int(task_id, 16) >= 0
    assert answer["data"]["recordId"] == task_id


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"strength": 1.5}, "input.strength"),
        ({"strength": -0.01}, "input.strength"),
        ({"strength": 0.555}, "input.strength"),
        ({"strength": "high"}, "input.strength"),
        ({"output_format": "webp"}, "input.output_format"),
        ({"acceleration": "max"}, "input.acceleration"),
        ({"num_inference_steps": 1}, "input.num_inference_steps"),
        ({"num_inference_steps": 251}, "input.num_inference_steps"),
        ({"num_inference_steps": 2.5}, "input.num_inference_steps"),
        ({"guidance_scale": 20.1}, "input.guidance_scale"),
        ({"guidance_scale": 2.55}, "input.guidance_scale"),
        ({"seed": 1.5}, "input.seed"),
        ({"seed": "7"}, "input.seed"),
        ({"prompt": "p" * 5001}, "input.prompt"),
        ({"prompt": 5}, "input.prompt"),
        ({"negative_prompt": "n" * 501}, "input.negative_prompt"),
        ({"enable_safety_checker": "yes"}, "input.enable_safety_checker"),
        ({"image_url": 12}, "input.image_url"),
    ],
)
def test_schema_violations_are_422_naming_the_field(client, fields, named):
    answer = client.create(**fields).json()
    assert answer["code"] == 422
    assert named in answer["msg"]
    assert answer["data"] is None
    assert client.stats()["accepted_create_tasks"] == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"strength": 0.07},  # 7.000000000000001 steps of 0.01: float noise, not an off-step value
        {"strength": 0.29},
        {"strength": 0},
        {"strength": 1},
        {"guidance_scale": 2.3},
        {"guidance_scale": 0.7},
        {"guidance_scale": 20},
        {"num_inference_steps": 2},
        {"num_inference_steps": 250.0},
        {"seed": -3},
        {"prompt": "p" * 5000, "negative_prompt": "n" * 500},
        {"output_format": "jpeg", "acceleration": "high", "enable_safety_checker": False},
    ],
)
def test_values_on_the_documented_steps_and_bounds_are_accepted(client, fields):
    assert client.create(**fields).json()["code"] == 200


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"model": MODEL, "input": {"prompt": "x"}}, "input.image_url"),
        ({"model": MODEL, "input": {"image_url": "http://127.0.0.1/a.png"}}, "input.prompt"),
        ({"model": "other/model", "input": {"prompt": "x", "image_url": "u"}}, "model"),
        ({"input": {"prompt": "x", "image_url": "u"}}, "model"),
        ({"model": MODEL}, "input"),
        ({"model": MODEL, "input": "x"}, "input"),
        ({"model": MODEL, "callBackUrl": "not a url", "input": {"prompt": "x", "image_url": "u"}}, "callBackUrl"),
    ],
)
def test_missing_or_wrong_top_level_fields_are_422_naming_them(client, body, named):
    answer = client.create_body(body).json()
    assert answer["code"] == 422
    assert f"{named}:" in answer["msg"]


def test_a_body_that_is_not_a_json_object_is_400(client):
    answer = client.http.post(f"{client.url}/api/v1/jobs/createTask", headers=AUTH, data=b"{nope")
    assert answer.json()["code"] == 400
    assert client.create_body([1, 2]).json()["code"] == 400  # type: ignore[arg-type]


def test_credits_are_charged_per_task_and_402_when_they_run_out(emulator_settings):
    settings = emulator_settings.model_copy(update={"credits": 5.0, "cost_per_task": 2.5})
    with run_emulator(settings) as running:
        client = Client(running)
        url = client.image_url()
        assert client.credit().json() == {"code": 200, "msg": "success", "data": 5}
        codes = [client.create(image_url=url).json()["code"] for _ in range(3)]
        assert codes == [200, 200, 402]
        assert client.credit().json()["data"] == 0
        assert client.stats()["accepted_create_tasks"] == 2
        assert len(running.state.tasks) == 2


def test_credits_may_be_fractional(emulator: RunningEmulator, client):
    emulator.configure(cost_per_task=0.25)
    client.create()
    assert client.credit().json()["data"] == pytest.approx(999.75)


def test_rate_limit_answers_429_drops_the_request_and_the_window_slides(client):
    client.configure(create_rate_limit=3, create_rate_window=0.6)
    url = client.image_url()
    codes = [client.create(image_url=url).json()["code"] for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert client.stats()["accepted_create_tasks"] == 3
    assert client.credit().json()["data"] == 997  # a dropped request is not charged
    import time

    time.sleep(0.65)
    assert client.create(image_url=url).json()["code"] == 200


def test_the_rate_limit_is_per_key(emulator_settings):
    settings = emulator_settings.model_copy(update={"api_keys": ["emulator-test-key", "other"], "create_rate_limit": 1})
    with run_emulator(settings) as running:
        client = Client(running)
        url = client.image_url()
        assert client.create(image_url=url).json()["code"] == 200
        assert client.create(image_url=url).json()["code"] == 429
        assert client.create(headers={"Authorization": "Bearer other"}, image_url=url).json()["code"] == 200


def test_the_default_rate_limit_is_20_per_10_seconds(emulator_settings):
    with run_emulator(emulator_settings.model_copy(update={"latency": (60, 0, 0)})) as running:
        client = Client(running)
        url = client.image_url()
        codes = [client.create(image_url=url).json()["code"] for _ in range(21)]
    assert codes == [200] * 20 + [429]
