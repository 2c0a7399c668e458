"""qwen/text-to-image: a second model, validated by its own schema and drawn from the prompt, on the same machinery."""

from __future__ import annotations

import hashlib
import io
import json
import time
from typing import Any

import pytest
from PIL import Image

from airflow_provider_qwen.emulator.imaging import IMAGE_SIZES, draw_image
from airflow_provider_qwen.emulator.models import IMAGE_TO_IMAGE, MODELS, TEXT_TO_IMAGE
from tests.emulator.conftest import Client


def create(client: Client, **input_fields: Any) -> dict[str, Any]:
    return client.create_body({"model": TEXT_TO_IMAGE, "input": {"prompt": "a red fox", **input_fields}}).json()


def finished(client: Client, **input_fields: Any) -> dict[str, Any]:
    answer = create(client, **input_fields)
    assert answer["code"] == 200, answer
    data = client.wait(answer["data"]["taskId"])
    assert data["state"] == "success", data
    return data


def result_urls(data: dict[str, Any]) -> list[str]:
    return json.loads(data["resultJson"])["resultUrls"]


def pictures(client: Client, **input_fields: Any) -> list[bytes]:
    contents = []
    for url in result_urls(finished(client, **input_fields)):
        response = client.http.get(url)
        assert response.status_code == 200
        contents.append(response.content)
    return contents


def test_the_models_are_named_constants():
    assert list(MODELS) == [IMAGE_TO_IMAGE, TEXT_TO_IMAGE] == ["qwen/image-to-image", "qwen/text-to-image"]
    assert MODELS[TEXT_TO_IMAGE].defaults == {
        "image_size": "square",
        "output_format": "png",
        "num_images": 1,
    }


def test_every_image_size_the_schema_allows_has_a_pixel_size():
    allowed = MODELS[TEXT_TO_IMAGE].input_properties["image_size"]["enum"]
    assert sorted(allowed) == sorted(IMAGE_SIZES)


def test_a_task_goes_through_its_states_to_a_drawn_png(client):
    answer = create(client, seed=5)
    assert (answer["code"], answer["msg"]) == (200, "success")
    task_id = answer["data"]["taskId"]
    assert answer["data"]["recordId"] == task_id
    assert client.states_until_ended(task_id) == ["waiting", "queuing", "generating", "success"]
    data = client.record(task_id)["data"]
    assert (data["taskId"], data["model"], data["failCode"], data["failMsg"]) == (task_id, TEXT_TO_IMAGE, "", "")
    assert json.loads(data["param"]) == {"model": TEXT_TO_IMAGE, "input": {"prompt": "a red fox", "seed": 5}}
    assert data["creditsConsumed"] == 1
    (url,) = result_urls(data)
    assert url == f"{client.url}/results/{task_id}/0.png"
    response = client.http.get(url)
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.size, image.mode) == ("PNG", (256, 256), "RGB")
    assert len(image.getcolors(256 * 256) or []) > 50  # a picture, not a flat fill
    assert client.credit().json()["data"] == 999


@pytest.mark.parametrize(
    ("image_size", "output_format", "pillow_format", "content_type", "size"),
    [
        ("square_hd", "png", "PNG", "image/png", (512, 512)),
        ("portrait_4_3", "jpeg", "JPEG", "image/jpeg", (192, 256)),
        ("landscape_4_3", "png", "PNG", "image/png", (256, 192)),
        ("portrait_16_9", "jpeg", "JPEG", "image/jpeg", (144, 256)),
        ("landscape_16_9", "jpeg", "JPEG", "image/jpeg", (256, 144)),
    ],
)
def test_results_have_the_requested_size_and_format(
    client, image_size, output_format, pillow_format, content_type, size
):
    data = finished(client, image_size=image_size, output_format=output_format)
    (url,) = result_urls(data)
    assert url.endswith(".png" if output_format == "png" else ".jpg")
    response = client.http.get(url)
    assert response.headers["content-type"] == content_type
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.size) == (pillow_format, size)


def test_num_images_gives_that_many_distinct_pictures(client):
    data = finished(client, num_images=4, output_format="jpeg", image_size="landscape_4_3")
    urls = result_urls(data)
    assert urls == [f"{client.url}/results/{data['taskId']}/{index}.jpg" for index in range(4)]
    contents = [client.http.get(url).content for url in urls]
    assert len(set(contents)) == 4
    assert {Image.open(io.BytesIO(content)).size for content in contents} == {(256, 192)}
    assert client.stats()["files"] == 4
    assert client.credit().json()["data"] == 999  # one task, however many pictures


def test_the_nth_picture_is_drawn_with_seed_plus_n(client):
    contents = pictures(client, prompt="three kites", seed=10, num_images=3)
    assert contents == [draw_image("three kites", seed=seed) for seed in (10, 11, 12)]


def test_same_input_gives_identical_bytes_and_other_inputs_differ(client):
    first = pictures(client, prompt="lighthouse in a storm", seed=3)
    again = pictures(client, prompt="lighthouse in a storm", seed=3)
    other_seed = pictures(client, prompt="lighthouse in a storm", seed=4)
    other_prompt = pictures(client, prompt="lighthouse at dawn", seed=3)
    other_negative = pictures(client, prompt="lighthouse in a storm", seed=3, negative_prompt="rain")
    assert hashlib.sha256(first[0]).digest() == hashlib.sha256(again[0]).digest()
    assert len({first[0], other_seed[0], other_prompt[0], other_negative[0]}) == 4


def test_no_seed_is_seed_zero():
    assert draw_image("a boat") == draw_image("a boat", seed=0) != draw_image("a boat", seed=1)


def test_colours_the_prompt_names_are_the_gradient_ends():
    image = Image.open(io.BytesIO(draw_image("red blue", image_size="square_hd", seed=1))).convert("RGB")
    corners = [image.getpixel(point) for point in ((0, 0), (511, 0), (0, 400), (511, 400))]
    reds = [pixel for pixel in corners if pixel[0] > 150 and pixel[2] < 100]
    blues = [pixel for pixel in corners if pixel[2] > 150 and pixel[0] < 100]
    assert reds or blues, corners  # shapes may cover a corner or two, not all four


def test_drawing_the_default_size_is_fast():
    draw_image("warm-up", seed=0)  # loads the font once
    timings = []
    for seed in range(5):
        started = time.perf_counter()
        draw_image("a quick picture of a cat on a mat", seed=seed)
        timings.append(time.perf_counter() - started)
    assert min(timings) < 0.05, timings


def test_failures_latency_and_expiry_are_shared_with_the_other_model(client):
    client.configure(fail_fraction=1.0)
    answer = create(client)
    data = client.wait(answer["data"]["taskId"])
    assert (data["state"], data["failCode"], data["resultJson"]) == ("fail", "501", "")
    client.configure(fail_fraction=0.0, file_ttl=0.4)
    (url,) = result_urls(finished(client))
    assert client.http.get(url).status_code == 200
    assert client.download_url(url)["code"] == 200
    time.sleep(0.45)
    assert client.http.get(url).status_code == 404


def test_a_callback_carries_the_drawn_results(client, emulator):
    from tests.emulator.test_callbacks import Receiver

    receiver = Receiver()
    try:
        body = {"model": TEXT_TO_IMAGE, "callBackUrl": receiver.url, "input": {"prompt": "a kite", "num_images": 2}}
        task_id = client.create_body(body).json()["data"]["taskId"]
        receiver.wait_for(1)
        _, payload = receiver.calls[0]
        assert (payload["code"], payload["data"]["taskId"], payload["data"]["model"]) == (200, task_id, TEXT_TO_IMAGE)
        assert len(result_urls(payload["data"])) == 2
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"prompt": ""}, "input.prompt"),
        ({"prompt": "p" * 5001}, "input.prompt"),
        ({"prompt": 5}, "input.prompt"),
        ({"image_size": "huge"}, "input.image_size"),
        ({"image_size": "1024x1024"}, "input.image_size"),
        ({"output_format": "webp"}, "input.output_format"),
        ({"seed": 1.5}, "input.seed"),
        ({"seed": "7"}, "input.seed"),
        ({"negative_prompt": "n" * 501}, "input.negative_prompt"),
        ({"num_images": 0}, "input.num_images"),
        ({"num_images": 5}, "input.num_images"),
        ({"num_images": 2.5}, "input.num_images"),
        ({"strength": 0.5}, "input.strength"),  # a field of qwen/image-to-image, not of this model
        ({"image_url": "http://127.0.0.1/a.png"}, "input.image_url"),
        ({"colour": "red"}, "input.colour"),
    ],
)
def test_schema_violations_are_422_naming_the_field_and_charge_nothing(client, fields, named):
    answer = create(client, **fields)
    assert answer["code"] == 422
    assert answer["msg"].startswith(f"Validation failed: {named}: ")
    assert answer["data"] is None
    assert client.stats()["accepted_create_tasks"] == 0
    assert client.credit().json()["data"] == 1000


def test_an_unknown_field_is_named_in_the_message(client):
    answer = create(client, colour="red")
    assert (
        answer["msg"]
        == "Validation failed: input.colour: Additional properties are not allowed ('colour' was unexpected)"
    )


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"model": TEXT_TO_IMAGE, "input": {"seed": 1}}, "input.prompt"),
        ({"model": TEXT_TO_IMAGE}, "input"),
        ({"model": TEXT_TO_IMAGE, "input": ["a fox"]}, "input"),
        ({"model": TEXT_TO_IMAGE, "callBackUrl": "not a url", "input": {"prompt": "x"}}, "callBackUrl"),
    ],
)
def test_missing_or_wrong_top_level_fields_are_422_naming_them(client, body, named):
    answer = client.create_body(body).json()
    assert answer["code"] == 422
    assert answer["msg"].startswith(f"Validation failed: {named}: ")
    assert client.stats()["accepted_create_tasks"] == 0


def test_the_other_models_required_fields_do_not_apply(client):
    # image_url is required by qwen/image-to-image only; the model's schema is chosen by the body's model
    answer = client.create_body({"model": IMAGE_TO_IMAGE, "input": {"prompt": "a red fox"}}).json()
    assert answer["msg"].startswith("Validation failed: input.image_url: ")
    assert create(client)["code"] == 200


@pytest.mark.parametrize("model", ["qwen/image-to-video", "QWEN/TEXT-TO-IMAGE", "", "qwen/text-to-image "])
def test_an_unknown_model_is_422_naming_it_and_the_known_ones(client, model):
    answer = client.create_body({"model": model, "input": {"prompt": "a red fox"}}).json()
    assert (answer["code"], answer["data"]) == (422, None)
    assert answer["msg"] == (
        f"Validation failed: model: {model!r} is not one of ['qwen/image-to-image', 'qwen/text-to-image']"
    )
    assert client.stats()["accepted_create_tasks"] == 0
    assert client.credit().json()["data"] == 1000


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": {"prompt": "x"}}, "model: 'model' is a required property"),
        ({"model": 7, "input": {"prompt": "x"}}, "model: 7 is not of type 'string'"),
        ({"model": ["qwen/text-to-image"], "input": {"prompt": "x"}}, "model: ['qwen/text-to-image'] is not of type"),
        # the model is checked first: it chooses the schema the rest is checked against
        ({"model": "other/model", "input": "x"}, "model: 'other/model' is not one of"),
    ],
)
def test_a_missing_or_malformed_model_is_422_naming_the_model(client, body, message):
    answer = client.create_body(body).json()
    assert answer["code"] == 422
    assert answer["msg"].startswith(f"Validation failed: {message}")
