"""Uploading source images and copying results to the user's storage."""

from __future__ import annotations

import hashlib
import time

import pytest
import requests

from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_qwen.emulator.script import envelope
from airflow_provider_qwen.exceptions import ApikleyBadResponseError, ApikleyError, ApikleyInputError
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.storage import MAX_UPLOAD_BYTES, sniff_image_type, write_atomically
from tests.conftest import API_KEY, submit_edit

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 100
RESULT_URL = "https://cdn.apikley.test/r/abc.png"
#: How long results stay downloadable, for the test of an expired one.
SHORT_FILE_TTL = 0.05
SERVER_ERROR = envelope(code=500, msg="oops")


@pytest.fixture
def hook(apikley) -> ApikleyHook:
    """A hook on ``apikley_default``, which points at the emulator (API and upload API)."""
    return ApikleyHook()


def finished_result(apikley, image_url: str) -> str:
    """The result URL of a real edit of ``image_url``, once the emulator has made it."""
    task = apikley.wait_until_ended(submit_edit(image_url))
    assert task.result_urls, f"task {task.task_id} failed: {task.fail_message}"
    return task.result_urls[0]


@pytest.mark.parametrize(("content", "mime"), [(PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP, "image/webp")])
def test_image_types_are_read_from_the_bytes(content, mime):
    assert sniff_image_type(content[:16]) == mime


def test_upload_file_streams_the_image_and_returns_its_download_url(apikley, hook, tmp_path):
    image = tmp_path / "shoe.png"
    image.write_bytes(PNG)
    url = hook.upload_file(image, "catalog/2026")
    assert url == f"{apikley.base_url}/files/catalog/2026/shoe.png"
    assert requests.get(url, timeout=5).content == PNG  # the emulator keeps what it was sent
    [sent] = apikley.seen("upload")
    assert f"{apikley.base_url}{sent.path}" == f"{apikley.upload_base_url}/api/file-stream-upload"
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["content-type"].startswith("multipart/form-data")
    body = sent.body
    assert b'name="uploadPath"\r\n\r\ncatalog/2026' in body
    assert b'filename="shoe.png"' in body
    assert PNG in body


def test_upload_base64_sends_a_data_url(apikley, hook):
    url = hook.upload_base64(JPEG, "catalog", file_name="mug.jpg")
    assert url == f"{apikley.base_url}/files/catalog/mug.jpg"
    [sent] = apikley.seen("upload")
    assert sent.path.endswith("/api/file-base64-upload")
    assert sent.json()["base64Data"].startswith("data:image/jpeg;base64,")
    assert (sent.json()["uploadPath"], sent.json()["fileName"]) == ("catalog", "mug.jpg")


def test_upload_from_url(apikley, hook, source_image_url):
    url = hook.upload_from_url(source_image_url, "catalog")
    assert url == f"{apikley.base_url}/files/catalog/shoe.png"
    [sent] = apikley.seen("upload")
    assert sent.path.endswith("/api/file-url-upload")
    assert sent.json() == {"fileUrl": source_image_url, "uploadPath": "catalog"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"GIF89a" + b"\x00" * 10, "must be a JPEG, PNG or WebP image"),
        (b"", "must be a JPEG, PNG or WebP image"),
        (PNG + b"\x00" * MAX_UPLOAD_BYTES, "must be at most 10485760 bytes"),
    ],
)
def test_bad_upload_is_refused_before_any_request(apikley, hook, content, message):
    with pytest.raises(ApikleyInputError, match=message):
        hook.upload_file(content, "catalog")
    assert apikley.seen() == []


@pytest.mark.parametrize("upload_path", ["", "/catalog", "catalog/", "../etc"])
def test_bad_upload_path_is_refused_before_any_request(apikley, hook, upload_path):
    with pytest.raises(ApikleyInputError, match="upload_path="):
        hook.upload_file(PNG, upload_path)
    assert apikley.seen() == []


def test_unnamed_upload_is_not_repeated_after_a_server_error(apikley, hook):
    apikley.script("upload", SERVER_ERROR)
    with pytest.raises(ApikleyError):
        hook.upload_file(PNG, "catalog")
    assert len(apikley.seen("upload")) == 1


def test_named_upload_overwrites_itself_so_it_is_repeated(apikley, hook):
    apikley.script("upload", SERVER_ERROR)
    assert hook.upload_file(PNG, "catalog", file_name="shoe.png") == f"{apikley.base_url}/files/catalog/shoe.png"
    assert len(apikley.seen("upload")) == 2


def test_download_result_writes_the_file_with_size_type_and_checksum(apikley, hook, source_image_url, tmp_path):
    result_url = finished_result(apikley, source_image_url)
    stored = hook.download_result(result_url, f"file://{tmp_path}/out/abc-0.png")
    [sent] = apikley.seen("results")
    edited = requests.get(result_url, timeout=5).content
    assert edited.startswith(b"\x89PNG")
    assert (tmp_path / "out" / "abc-0.png").read_bytes() == edited
    assert stored.to_dict() == {
        "uri": f"file://{tmp_path}/out/abc-0.png",
        "source_url": result_url,
        "size": len(edited),
        "content_type": "image/png",
        "sha256": hashlib.sha256(edited).hexdigest(),
    }
    assert "authorization" not in sent.headers  # the key stays with Apikley's API


@pytest.mark.parametrize("url", ["file:///etc/passwd", "/tmp/a.png", "ftp://cdn.example.org/a.png"])
def test_download_refuses_urls_that_are_not_http(apikley, hook, tmp_path, url):
    with pytest.raises(ApikleyInputError, match="must be an http"):
        hook.download_result(url, f"file://{tmp_path}/a.png")
    assert apikley.seen() == []


def test_expired_result_is_a_clear_error(apikley, hook, source_image_url, tmp_path):
    apikley.configure(file_ttl=SHORT_FILE_TTL)
    result_url = finished_result(apikley, source_image_url)
    time.sleep(SHORT_FILE_TTL)
    with pytest.raises(ApikleyError, match="HTTP 404"):
        hook.download_result(result_url, f"file://{tmp_path}/a.png")
    assert list(tmp_path.iterdir()) == []
    assert len(apikley.seen("results")) == 1


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
