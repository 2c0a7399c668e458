"""recordInfo: a task's states over time, the real edit it produces, failures and expiry."""

from __future__ import annotations

import hashlib
import io
import json
import time

import pytest
from PIL import Image

from tests.emulator.conftest import MODEL, picture, png


def test_a_task_goes_through_its_states_to_a_real_edited_image(client):
    created_at = time.time()
    answer = client.create(image_url=client.image_url(png("#2c7fb8", (80, 60))), output_format="jpeg", seed=9).json()
    task_id = answer["data"]["taskId"]
    assert client.states_until_ended(task_id) == ["waiting", "queuing", "generating", "success"]
    answer = client.record(task_id)
    assert (answer["code"], answer["msg"]) == (200, "success")
    data = answer["data"]
    assert (data["taskId"], data["model"], data["failCode"], data["failMsg"]) == (task_id, MODEL, "", "")
    param = json.loads(data["param"])
    assert param["model"] == MODEL and param["input"]["output_format"] == "jpeg" and param["input"]["seed"] == 9
    (url,) = json.loads(data["resultJson"])["resultUrls"]
    assert url.startswith(f"{client.url}/results/{task_id}/")
    response = client.http.get(url)
    assert response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.size) == ("JPEG", (80, 60))
    assert abs(data["createTime"] / 1000 - created_at) < 2
    assert data["createTime"] <= data["updateTime"] == data["completeTime"]
    assert 0 < data["costTime"] < data["completeTime"] - data["createTime"] + 1


def test_a_running_task_has_no_result_yet(client, emulator):
    emulator.configure(latency=(30, 0, 0))
    data = client.record(client.task_id())["data"]
    assert (data["state"], data["resultJson"], data["completeTime"], data["costTime"]) == ("waiting", "", None, 0)
    assert data["updateTime"] == data["createTime"]


def test_defaults_apply_png_output(client):
    data = client.wait(client.task_id(image_url=client.image_url(picture(image_format="JPEG"), "a.jpg")))
    (url,) = json.loads(data["resultJson"])["resultUrls"]
    assert url.endswith(".png")
    assert Image.open(io.BytesIO(client.http.get(url).content)).format == "PNG"


def result_bytes(client, **fields) -> bytes:
    data = client.wait(client.task_id(**fields))
    assert data["state"] == "success", data
    return client.http.get(json.loads(data["resultJson"])["resultUrls"][0]).content


def test_same_input_gives_identical_bytes_and_other_inputs_differ(client):
    url = client.image_url(picture())
    first = result_bytes(client, image_url=url, prompt="warm light", seed=3, strength=0.7)
    again = result_bytes(client, image_url=url, prompt="warm light", seed=3, strength=0.7)
    other_seed = result_bytes(client, image_url=url, prompt="warm light", seed=4, strength=0.7)
    other_prompt = result_bytes(client, image_url=url, prompt="invert it", seed=3, strength=0.7)
    other_strength = result_bytes(client, image_url=url, prompt="warm light", seed=3, strength=0.3)
    assert hashlib.sha256(first).digest() == hashlib.sha256(again).digest()
    assert len({first, other_seed, other_prompt, other_strength}) == 4


def test_the_same_image_uploaded_twice_gives_the_same_edit(client):
    first = result_bytes(client, image_url=client.image_url(picture(), "one.png"), seed=1, output_format="jpeg")
    second = result_bytes(client, image_url=client.image_url(picture(), "two.png"), seed=1, output_format="jpeg")
    assert first == second


def test_fail_fraction_one_fails_every_task_with_code_and_message(client):
    client.configure(fail_fraction=1.0)
    data = client.wait(client.task_id())
    assert (data["state"], data["failCode"]) == ("fail", "501")
    assert "failed" in data["failMsg"]
    assert data["resultJson"] == ""
    assert data["completeTime"] is not None


def test_fail_fraction_fails_about_that_share(client):
    client.configure(fail_fraction=0.5, latency=(0, 0, 0), random_seed=11, create_rate_limit=100)
    url = client.image_url()
    states = [client.wait(client.task_id(image_url=url))["state"] for _ in range(30)]
    assert 5 <= states.count("fail") <= 25
    assert states.count("fail") + states.count("success") == 30


@pytest.mark.parametrize(
    ("image_url", "message"),
    [
        ("https://example.org/a.png", "not one the emulator may fetch from"),
        ("ftp://127.0.0.1/a.png", "not an http(s) URL"),
        ("", "not an http(s) URL"),
        ("{base}/files/tests/never-uploaded.png", "does not exist or has expired"),
    ],
)
def test_an_image_url_it_cannot_read_fails_the_task_saying_why(client, image_url, message):
    data = client.wait(client.task_id(image_url=image_url.format(base=client.url)))
    assert (data["state"], data["failCode"]) == ("fail", "422")
    assert message in data["failMsg"]


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"GIF89a" + b"\x00" * 32, "a.gif", "content type 'image/gif' is not accepted"),
        (b"hello, not an image", "a.png", "not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "a.png", "not a readable image"),
    ],
)
def test_a_bad_source_image_fails_the_task_saying_why(client, content, name, message):
    upload = client.upload(content, name=name).json()
    assert upload["code"] == 200  # the upload API stores any file; the model is the one that refuses
    data = client.wait(client.task_id(image_url=upload["data"]["downloadUrl"]))
    assert (data["state"], data["failCode"]) == ("fail", "422")
    assert message in data["failMsg"]


def test_webp_sources_are_accepted(client):
    content = result_bytes(client, image_url=client.image_url(picture(image_format="WEBP"), "a.webp"))
    assert Image.open(io.BytesIO(content)).size == (96, 64)


def test_a_result_can_be_the_source_of_another_edit(client):
    first = client.wait(client.task_id(image_url=client.image_url(picture())))
    second = client.wait(client.task_id(image_url=json.loads(first["resultJson"])["resultUrls"][0], prompt="blur"))
    assert second["state"] == "success"


def test_a_loopback_alias_of_the_emulator_is_itself(client):
    url = client.image_url().replace("127.0.0.1", "localhost")
    assert client.wait(client.task_id(image_url=url))["state"] == "success"


def test_the_edit_runs_once_per_task_however_often_it_is_polled(client, monkeypatch):
    from airflow_provider_qwen.emulator import generation

    calls = []
    real = generation.edit_image
    monkeypatch.setattr(generation, "edit_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    task_id = client.task_id()
    for _ in range(20):
        client.record(task_id)
    client.wait(task_id)
    for _ in range(5):
        client.record(task_id)
    assert calls == [1]


def test_unknown_task_is_422_record_info_is_null(client):
    assert client.record("f" * 32) == {"code": 422, "msg": "recordInfo is null", "data": None}


def test_missing_task_id_is_400(client):
    assert client.record(None)["code"] == 400
    assert client.record("")["code"] == 400


def test_record_info_needs_the_key(client):
    task_id = client.task_id()
    answer = client.http.get(f"{client.url}/api/v1/jobs/recordInfo", params={"taskId": task_id}).json()
    assert answer["code"] == 401


def test_results_expire(client):
    client.configure(file_ttl=0.4)
    data = client.wait(client.task_id())
    url = json.loads(data["resultJson"])["resultUrls"][0]
    assert client.http.get(url).status_code == 200
    time.sleep(0.45)
    assert client.http.get(url).status_code == 404
    assert client.stats()["api_codes"]["results 404"] == 1
