"""The upload API, the files it serves, download-url and credit."""

from __future__ import annotations

import base64
import datetime
import json
import time

import pytest
import requests

from airflow_provider_qwen.emulator import run_emulator
from tests.emulator.conftest import AUTH, picture, png


def test_stream_upload_answers_the_documented_shape_and_serves_the_file(client):
    content = png("#8e44ad")
    answer = client.upload(content, name="s.png", path="tests/batch-1")
    assert answer.status_code == 200
    body = answer.json()
    assert (body["success"], body["code"]) == (True, 200)
    data = body["data"]
    assert data["fileName"] == "s.png"
    assert data["filePath"] == "tests/batch-1/s.png"
    assert data["downloadUrl"] == f"{client.url}/files/tests/batch-1/s.png"
    assert (data["fileSize"], data["mimeType"]) == (len(content), "image/png")
    uploaded = datetime.datetime.fromisoformat(data["uploadedAt"].replace("Z", "+00:00"))
    assert abs(uploaded.timestamp() - time.time()) < 5
    served = client.http.get(data["downloadUrl"])
    assert (served.content, served.headers["content-type"]) == (content, "image/png")


def test_file_name_field_wins_and_a_missing_name_is_generated(client):
    named = client.upload(png(), name="original.png", fileName="chosen.png").json()["data"]
    assert named["fileName"] == "chosen.png"
    response = client.http.post(
        f"{client.upload_url}/file-stream-upload",
        headers=AUTH,
        files={"file": ("", picture(image_format="JPEG"), "application/octet-stream")},
        data={"uploadPath": "t"},
    ).json()["data"]
    assert response["mimeType"] == "image/jpeg"
    assert response["fileName"].endswith(".jpg")


def test_the_same_name_overwrites(client):
    first = client.upload(png("#000000"), name="same.png").json()["data"]
    second = client.upload(png("#ffffff"), name="same.png").json()["data"]
    assert first["downloadUrl"] == second["downloadUrl"]
    assert client.http.get(second["downloadUrl"]).content == png("#ffffff")


@pytest.mark.parametrize("data_url", [True, False])
def test_base64_upload_plain_or_as_a_data_url(client, data_url):
    content = picture(image_format="WEBP")
    encoded = base64.b64encode(content).decode()
    answer = client.http.post(
        f"{client.upload_url}/file-base64-upload",
        headers=AUTH,
        json={
            "base64Data": f"data:image/webp;base64,{encoded}" if data_url else encoded,
            "uploadPath": "t",
            "fileName": "b.webp",
        },
    ).json()
    assert (answer["success"], answer["data"]["mimeType"], answer["data"]["fileSize"]) == (
        True,
        "image/webp",
        len(content),
    )
    assert client.http.get(answer["data"]["downloadUrl"]).content == content


def test_url_upload_copies_a_file_the_emulator_serves(client):
    content = png("#16a085")
    source = client.image_url(content, "src.png")
    answer = client.http.post(
        f"{client.upload_url}/file-url-upload",
        headers=AUTH,
        json={"fileUrl": source, "uploadPath": "copies"},
    ).json()
    assert answer["code"] == 200
    assert answer["data"]["filePath"] == "copies/src.png"
    assert client.http.get(answer["data"]["downloadUrl"]).content == content


def test_url_upload_fetches_only_from_allowed_hosts(client):
    answer = client.http.post(
        f"{client.upload_url}/file-url-upload",
        headers=AUTH,
        json={"fileUrl": "https://example.org/a.png", "uploadPath": "t"},
    ).json()
    assert (answer["success"], answer["code"]) == (False, 422)
    assert "may fetch from" in answer["msg"]


def test_url_upload_from_an_allowed_host(client, emulator_settings):
    content = png("#d35400")
    with run_emulator(emulator_settings) as other:
        source = requests.post(
            f"{other.upload_base_url}/api/file-stream-upload",
            headers=AUTH,
            files={"file": ("x.png", content, "image/png")},
            data={"uploadPath": "t"},
        ).json()["data"]["downloadUrl"]
        host = source.split("/")[2]
        client.configure(allowed_image_hosts=[host])
        answer = client.http.post(
            f"{client.upload_url}/file-url-upload", headers=AUTH, json={"fileUrl": source, "uploadPath": "t"}
        ).json()
        assert answer["code"] == 200, answer
        assert client.http.get(answer["data"]["downloadUrl"]).content == content
        data = client.wait(client.task_id(image_url=source))  # and tasks may read straight from it
        assert data["state"] == "success"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "/t"}, "uploadPath"),
        ({"path": "t/"}, "uploadPath"),
        ({"path": ""}, "uploadPath"),
        ({"path": "a/../b"}, "uploadPath"),
        ({"fileName": "../x.png"}, "fileName"),
        ({"content": b"\x89PNG\r\n\x1a\n" + b"\x00" * (10 * 1024 * 1024)}, "10 MB"),
    ],
)
def test_bad_stream_uploads_are_refused(client, kwargs, message):
    answer = client.upload(kwargs.pop("content", png()), **kwargs).json()
    assert (answer["success"], answer["code"]) == (False, 422)
    assert message in answer["msg"]


def test_exactly_10_mb_is_accepted(client):
    content = b"\x89PNG\r\n\x1a\n" + b"\x00" * (10 * 1024 * 1024 - 8)
    assert client.upload(content).json()["data"]["fileSize"] == 10 * 1024 * 1024


def test_a_stream_upload_without_a_file_is_refused(client):
    answer = client.http.post(f"{client.upload_url}/file-stream-upload", headers=AUTH, data={"uploadPath": "t"})
    assert (answer.status_code, answer.json()["code"]) == (200, 422)
    assert "file" in answer.json()["msg"]


@pytest.mark.parametrize(
    "body",
    [{"base64Data": "***", "uploadPath": "t"}, {"base64Data": "", "uploadPath": "t"}, {"uploadPath": "t"}],
)
def test_bad_base64_is_refused(client, body):
    answer = client.http.post(f"{client.upload_url}/file-base64-upload", headers=AUTH, json=body).json()
    assert (answer["success"], answer["code"]) == (False, 422)
    assert "base64Data" in answer["msg"]


@pytest.mark.parametrize("kind", ["file-stream-upload", "file-base64-upload", "file-url-upload"])
def test_uploads_need_the_key(client, kind):
    answer = client.http.post(f"{client.upload_url}/{kind}", json={}).json()
    assert (answer["success"], answer["code"]) == (False, 401)


def test_uploads_expire(client):
    client.configure(file_ttl=0.3)
    url = client.image_url()
    assert client.http.get(url).status_code == 200
    time.sleep(0.35)
    assert client.http.get(url).status_code == 404
    data = client.wait(client.task_id(image_url=url))
    assert (data["state"], data["failCode"]) == ("fail", "422")


def test_the_upload_api_lives_under_a_configurable_base_path(emulator_settings):
    with run_emulator(emulator_settings.model_copy(update={"upload_base_path": "/uploads/v2"})) as running:
        assert running.upload_base_url == f"{running.base_url}/uploads/v2"
        answer = requests.post(
            f"{running.base_url}/uploads/v2/api/file-stream-upload",
            headers=AUTH,
            files={"file": ("a.png", png(), "image/png")},
            data={"uploadPath": "t"},
        ).json()
        assert answer["code"] == 200
        assert requests.get(answer["data"]["downloadUrl"]).content == png()
        assert requests.post(f"{running.base_url}/file-upload/api/file-stream-upload", headers=AUTH).status_code == 404


def test_download_url_gives_a_temporary_link_for_its_own_urls_only(client):
    data = client.wait(client.task_id())
    result = json.loads(data["resultJson"])["resultUrls"][0]
    link = client.download_url(result)
    assert link["code"] == 200 and link["data"].startswith(f"{result}?expires=")
    assert client.http.get(link["data"]).content == client.http.get(result).content
    uploaded = client.image_url()
    assert client.download_url(uploaded)["code"] == 200
    assert client.download_url("https://example.org/y.png")["code"] == 422
    assert client.download_url(f"{client.url}/results/{'0' * 32}/0.png")["code"] == 422
    answer = client.http.post(f"{client.url}/api/v1/common/download-url", headers=AUTH, json={}).json()
    assert answer["code"] == 422


def test_download_links_expire(client):
    client.configure(download_link_ttl=0.3)
    link = client.download_url(client.image_url())["data"]
    assert client.http.get(link).status_code == 200
    time.sleep(0.35)
    assert client.http.get(link).status_code == 404
    assert client.http.get(link.split("?")[0]).status_code == 200  # the file itself lives on


def test_credit_answers_the_remaining_credits(client):
    assert client.credit().json() == {"code": 200, "msg": "success", "data": 1000}
    client.create()
    assert client.credit().json()["data"] == 999
    assert client.http.get(f"{client.url}/api/v1/chat/credit").json()["code"] == 401
