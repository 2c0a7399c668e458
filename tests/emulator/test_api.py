"""The emulator answers as Apikley's documentation describes, to any client."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time

import pytest
import requests
from PIL import Image

from airflow_provider_qwen.emulator import EmulatorSettings
from tests.emulator.conftest import AUTH, png


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}])
def test_missing_or_unknown_key_is_401(client, headers):
    answer = client.create(headers=headers, image_url="http://x/a.png").json()
    assert answer["code"] == 401
    assert client.stats()["accepted_create_tasks"] == 0


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"strength": 1.5}, "input.strength"),
        ({"strength": 0.555}, "input.strength"),
        ({"output_format": "webp"}, "input.output_format"),
        ({"num_inference_steps": 1}, "input.num_inference_steps"),
        ({"guidance_scale": 2.55}, "input.guidance_scale"),
        ({"seed": 1.5}, "input.seed"),
        ({"prompt": "p" * 5001}, "input.prompt"),
        ({"negative_prompt": "n" * 501}, "input.negative_prompt"),
        ({"enable_safety_checker": "yes"}, "input.enable_safety_checker"),
    ],
)
def test_schema_violations_are_422_naming_the_field(client, fields, named):
    answer = client.create(**fields).json()
    assert answer["code"] == 422
    assert named in answer["msg"]
    assert client.stats()["accepted_create_tasks"] == 0


def test_missing_required_fields_are_422(client):
    answer = client.http.post(
        f"{client.url}/api/v1/jobs/createTask",
        headers=AUTH,
        json={"model": "qwen/image-to-image", "input": {"prompt": "x"}},
    ).json()
    assert (answer["code"], "input.image_url" in answer["msg"]) == (422, True)
    answer = client.http.post(
        f"{client.url}/api/v1/jobs/createTask", headers=AUTH, json={"model": "other/model", "input": {}}
    ).json()
    assert answer["code"] == 422


def test_a_task_goes_through_its_states_to_a_real_edited_image(client):
    source = png("#2c7fb8", (80, 60))
    answer = client.create(image_url=client.image_url(source), output_format="jpeg").json()
    assert answer["code"] == 200
    task_id = answer["data"]["taskId"]
    assert len(task_id) == 32 and int(task_id, 16) >= 0
    seen = []
    while not seen or seen[-1] not in ("success", "fail"):
        state = client.record(task_id)["data"]["state"]
        if not seen or seen[-1] != state:
            seen.append(state)
        time.sleep(0.01)
    assert seen[-1] == "success"
    assert set(seen) <= {"waiting", "queuing", "generating", "success"}
    data = client.record(task_id)["data"]
    assert json.loads(data["param"])["input"]["output_format"] == "jpeg"
    (url,) = json.loads(data["resultJson"])["resultUrls"]
    image = Image.open(io.BytesIO(client.http.get(url).content))
    assert (image.format, image.size) == ("JPEG", (80, 60))
    assert data["completeTime"] >= data["createTime"]


def result_bytes(client, **fields) -> bytes:
    data = client.wait(client.create(**fields).json()["data"]["taskId"])
    return client.http.get(json.loads(data["resultJson"])["resultUrls"][0]).content


def test_same_input_gives_identical_bytes_and_other_inputs_differ(client):
    url = client.image_url(png("#27ae60"))
    first = result_bytes(client, image_url=url, prompt="warm light", seed=3, strength=0.7)
    again = result_bytes(client, image_url=url, prompt="warm light", seed=3, strength=0.7)
    other_seed = result_bytes(client, image_url=url, prompt="warm light", seed=4, strength=0.7)
    other_prompt = result_bytes(client, image_url=url, prompt="invert it", seed=3, strength=0.7)
    assert hashlib.sha256(first).digest() == hashlib.sha256(again).digest()
    assert len({first, other_seed, other_prompt}) == 3


def test_fail_fraction_one_fails_every_task_with_code_and_message(client):
    client.configure(fail_fraction=1.0)
    data = client.wait(client.create().json()["data"]["taskId"])
    assert (data["state"], data["failCode"]) == ("fail", "501")
    assert data["failMsg"]
    assert data["resultJson"] == ""


def test_an_image_url_it_may_not_fetch_fails_the_task(client):
    data = client.wait(client.create(image_url="https://example.org/a.png").json()["data"]["taskId"])
    assert data["state"] == "fail"
    assert "not one the emulator may fetch" in data["failMsg"]


def test_unknown_task_is_422_record_info_is_null(client):
    assert client.record("f" * 32) == {"code": 422, "msg": "recordInfo is null", "data": None}


def test_credits_are_charged_and_402_when_gone(emulator_settings):
    from airflow_provider_qwen.emulator import run_emulator
    from tests.emulator.conftest import Client

    with run_emulator(emulator_settings.model_copy(update={"credits": 2.0})) as running:
        client = Client(running)
        codes = [client.create().json()["code"] for _ in range(3)]
        assert codes == [200, 200, 402]
        assert client.http.get(f"{client.url}/api/v1/chat/credit", headers=AUTH).json()["data"] == 0.0
        assert client.stats()["accepted_create_tasks"] == 2


def test_create_rate_limit_answers_429_and_drops_the_request(client):
    client.configure(create_rate_limit=3, create_rate_window=60)
    url = client.image_url()
    codes = [client.create(image_url=url).json()["code"] for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert client.stats()["accepted_create_tasks"] == 3


def test_uploads_by_stream_base64_and_url(client):
    content = png("#8e44ad")
    streamed = client.upload(content, name="s.png").json()
    assert streamed["success"] is True
    assert streamed["data"]["mimeType"] == "image/png"
    assert streamed["data"]["fileSize"] == len(content)
    by_base64 = client.http.post(
        f"{client.url}/file-upload/api/file-base64-upload",
        headers=AUTH,
        json={
            "base64Data": "data:image/png;base64," + base64.b64encode(content).decode(),
            "uploadPath": "t",
            "fileName": "b.png",
        },
    ).json()
    by_url = client.http.post(
        f"{client.url}/file-upload/api/file-url-upload",
        headers=AUTH,
        json={"fileUrl": streamed["data"]["downloadUrl"], "uploadPath": "t", "fileName": "c.png"},
    ).json()
    for answer in (streamed, by_base64, by_url):
        assert client.http.get(answer["data"]["downloadUrl"]).content == content


@pytest.mark.parametrize(
    ("content", "path"),
    [(b"GIF89a....", "t"), (b"\x89PNG\r\n\x1a\n" + b"\x00" * (10 * 1024 * 1024), "t"), (None, "/t")],
)
def test_bad_uploads_are_refused(client, content, path):
    answer = client.upload(content if content is not None else png(), path=path).json()
    assert answer["code"] == 422


def test_download_url_only_for_its_own_results(client):
    data = client.wait(client.create().json()["data"]["taskId"])
    result = json.loads(data["resultJson"])["resultUrls"][0]
    link = client.http.post(f"{client.url}/api/v1/common/download-url", headers=AUTH, json={"url": result}).json()
    assert link["code"] == 200 and link["data"].startswith(result)
    foreign = client.http.post(
        f"{client.url}/api/v1/common/download-url", headers=AUTH, json={"url": "https://x/y.png"}
    )
    assert foreign.json()["code"] == 422


def test_results_and_uploads_expire(client):
    client.configure(file_ttl=0.3)
    url = client.image_url()
    assert client.http.get(url).status_code == 200
    time.sleep(0.4)
    assert client.http.get(url).status_code == 404


def test_stats_count_requests_and_reset_forgets(client):
    client.wait(client.create().json()["data"]["taskId"])
    stats = client.stats()
    assert stats["accepted_create_tasks"] == 1
    assert stats["tasks_by_state"] == {"success": 1}
    assert stats["requests"]["createTask 200"] == 1
    assert stats["requests"]["recordInfo 200"] >= 1
    client.http.post(f"{client.url}/_emulator/reset")
    assert client.stats()["accepted_create_tasks"] == 0
    assert client.stats()["requests"] == {}


def test_maintenance_window_answers_455(emulator_settings):
    from airflow_provider_qwen.emulator import run_emulator
    from tests.emulator.conftest import Client

    with run_emulator(emulator_settings.model_copy(update={"maintenance_seconds": 0.5})) as running:
        client = Client(running)
        assert client.http.get(f"{client.url}/api/v1/chat/credit", headers=AUTH).json()["code"] == 455
        time.sleep(0.6)
        assert client.http.get(f"{client.url}/api/v1/chat/credit", headers=AUTH).json()["code"] == 200


def test_settings_are_validated():
    with pytest.raises(ValueError):
        EmulatorSettings(fail_fraction=2)


def test_the_upload_api_lives_under_a_configurable_base_path(emulator_settings):
    from airflow_provider_qwen.emulator import run_emulator

    with run_emulator(emulator_settings.model_copy(update={"upload_base_path": "/uploads/v2"})) as running:
        answer = requests.post(
            f"{running.base_url}/uploads/v2/api/file-stream-upload",
            headers=AUTH,
            files={"file": ("a.png", png(), "image/png")},
            data={"uploadPath": "t"},
        ).json()
    assert answer["data"]["downloadUrl"].startswith(running.base_url)
