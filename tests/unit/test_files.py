"""Uploading source images and copying results to the user's storage."""

from __future__ import annotations

import hashlib
import json

import pytest
import requests

from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_qwen.exceptions import ApikleyBadResponseError, ApikleyError, ApikleyInputError
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.storage import MAX_UPLOAD_BYTES, sniff_image_type, write_atomically
from tests.conftest import API_KEY

UPLOAD_BASE = "https://upload.apikley.test/file-upload"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 100
RESULT_URL = "https://cdn.apikley.test/r/abc.png"


def uploaded(url: str = "https://cdn.apikley.test/u/shoe.png") -> dict:
    return {"success": True, "code": 200, "msg": "ok", "data": {"downloadUrl": url, "fileName": "shoe.png"}}


@pytest.fixture
def hook(monkeypatch) -> ApikleyHook:
    monkeypatch.setenv(
        "AIRFLOW_CONN_APIKLEY_DEFAULT",
        json.dumps(
            {
                "conn_type": "apikley",
                "host": "https://api.apikley.test",
                "password": API_KEY,
                "extra": {"upload_base_url": UPLOAD_BASE},
            }
        ),
    )
    return ApikleyHook()


@pytest.mark.parametrize(("content", "mime"), [(PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP, "image/webp")])
def test_image_types_are_read_from_the_bytes(content, mime):
    assert sniff_image_type(content[:16]) == mime


def test_upload_file_streams_the_image_and_returns_its_download_url(hook, requests_mock, tmp_path):
    image = tmp_path / "shoe.png"
    image.write_bytes(PNG)
    requests_mock.post(f"{UPLOAD_BASE}/api/file-stream-upload", json=uploaded())
    assert hook.upload_file(image, "catalog/2026") == "https://cdn.apikley.test/u/shoe.png"
    sent = requests_mock.last_request
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["Content-Type"].startswith("multipart/form-data")
    body = sent.body
    assert b'name="uploadPath"\r\n\r\ncatalog/2026' in body
    assert b'filename="shoe.png"' in body
    assert PNG in body


def test_upload_base64_sends_a_data_url(hook, requests_mock):
    requests_mock.post(f"{UPLOAD_BASE}/api/file-base64-upload", json=uploaded())
    hook.upload_base64(JPEG, "catalog", file_name="mug.jpg")
    sent = requests_mock.last_request.json()
    assert sent["base64Data"].startswith("data:image/jpeg;base64,")
    assert (sent["uploadPath"], sent["fileName"]) == ("catalog", "mug.jpg")


def test_upload_from_url(hook, requests_mock):
    requests_mock.post(f"{UPLOAD_BASE}/api/file-url-upload", json=uploaded())
    hook.upload_from_url("https://example.org/a.png", "catalog")
    assert requests_mock.last_request.json() == {"fileUrl": "https://example.org/a.png", "uploadPath": "catalog"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"GIF89a" + b"\x00" * 10, "must be a JPEG, PNG or WebP image"),
        (b"", "must be a JPEG, PNG or WebP image"),
        (PNG + b"\x00" * MAX_UPLOAD_BYTES, "must be at most 10485760 bytes"),
    ],
)
def test_bad_upload_is_refused_before_any_request(hook, requests_mock, content, message):
    with pytest.raises(ApikleyInputError, match=message):
        hook.upload_file(content, "catalog")
    assert requests_mock.call_count == 0


@pytest.mark.parametrize("upload_path", ["", "/catalog", "catalog/", "../etc"])
def test_bad_upload_path_is_refused_before_any_request(hook, requests_mock, upload_path):
    with pytest.raises(ApikleyInputError, match="upload_path="):
        hook.upload_file(PNG, upload_path)
    assert requests_mock.call_count == 0


def test_unnamed_upload_is_not_repeated_after_a_server_error(hook, requests_mock):
    requests_mock.post(f"{UPLOAD_BASE}/api/file-stream-upload", json={"code": 500, "msg": "oops"})
    with pytest.raises(ApikleyError):
        hook.upload_file(PNG, "catalog")
    assert requests_mock.call_count == 1


def test_named_upload_overwrites_itself_so_it_is_repeated(hook, requests_mock):
    requests_mock.post(
        f"{UPLOAD_BASE}/api/file-stream-upload", [{"json": {"code": 500, "msg": "oops"}}, {"json": uploaded()}]
    )
    hook.upload_file(PNG, "catalog", file_name="shoe.png")
    assert requests_mock.call_count == 2


def test_download_result_writes_the_file_with_size_type_and_checksum(hook, requests_mock, tmp_path):
    requests_mock.get(RESULT_URL, content=PNG)
    stored = hook.download_result(RESULT_URL, f"file://{tmp_path}/out/abc-0.png")
    assert (tmp_path / "out" / "abc-0.png").read_bytes() == PNG
    assert stored.to_dict() == {
        "uri": f"file://{tmp_path}/out/abc-0.png",
        "source_url": RESULT_URL,
        "size": len(PNG),
        "content_type": "image/png",
        "sha256": hashlib.sha256(PNG).hexdigest(),
    }
    assert "Authorization" not in requests_mock.last_request.headers  # the key stays with Apikley's API


@pytest.mark.parametrize("url", ["file:///etc/passwd", "/tmp/a.png", "ftp://cdn.example.org/a.png"])
def test_download_refuses_urls_that_are_not_http(hook, requests_mock, tmp_path, url):
    with pytest.raises(ApikleyInputError, match="must be an http"):
        hook.download_result(url, f"file://{tmp_path}/a.png")
    assert requests_mock.call_count == 0


def test_expired_result_is_a_clear_error(hook, requests_mock, tmp_path):
    requests_mock.get(RESULT_URL, status_code=404)
    with pytest.raises(ApikleyError, match="HTTP 404"):
        hook.download_result(RESULT_URL, f"file://{tmp_path}/a.png")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_midway_leaves_no_file_behind(tmp_path):
    def broken_stream():
        yield PNG[:50]
        raise requests.ConnectionError("connection reset")

    dest = ObjectStoragePath(f"file://{tmp_path}/a.png")
    with pytest.raises(requests.ConnectionError):
        write_atomically(broken_stream(), dest, source_url=RESULT_URL)
    assert list(tmp_path.iterdir()) == []


def test_a_result_over_the_cap_is_refused_and_leaves_nothing(tmp_path):
    dest = ObjectStoragePath(f"file://{tmp_path}/a.png")
    with pytest.raises(ApikleyError, match="larger than the 100 byte limit"):
        write_atomically(iter([PNG, PNG]), dest, source_url=RESULT_URL, max_bytes=100)
    assert list(tmp_path.iterdir()) == []


def test_a_result_that_is_not_an_image_is_refused_and_leaves_nothing(tmp_path):
    dest = ObjectStoragePath(f"file://{tmp_path}/a.png")
    with pytest.raises(ApikleyBadResponseError, match="not a PNG, JPEG or WebP"):
        write_atomically(iter([b"<html>expired</html>"]), dest, source_url=RESULT_URL)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_replaced_whole(tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(JPEG)
    write_atomically(iter([PNG]), ObjectStoragePath(f"file://{target}"), source_url=RESULT_URL)
    assert target.read_bytes() == PNG
