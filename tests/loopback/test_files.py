"""Uploading source images and copying results to the user's storage."""

from __future__ import annotations

import hashlib
import io
import re
import time

import pytest
import requests

from airflow.exceptions import AirflowProviderDeprecationWarning
from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_qwen.emulator.script import envelope
from airflow_provider_qwen.exceptions import (
    ApikleyBadResponseError,
    ApikleyError,
    ApikleyInputError,
    ApikleyResultExistsError,
)
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.names import MAX_FILE_NAME_BYTES
from airflow_provider_qwen.results import store_results
from airflow_provider_qwen.storage import (
    MAX_UPLOAD_BYTES,
    sniff_image_type,
    write_atomically,
)
from tests.conftest import API_KEY, submit_edit

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 100
RESULT_URL = "https://cdn.apikley.test/r/abc.png"
#: How long results stay downloadable, for the test of an expired one.
SHORT_FILE_TTL = 0.05
SERVER_ERROR = envelope(code=500, msg="oops")


def png(colour: str) -> bytes:
    """A real PNG of one colour: different colours are different bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


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


def unique(name: str, content: bytes) -> str:
    """The name an upload of ``content`` as ``name`` is stored under by default."""
    stem, _, extension = name.rpartition(".")
    return f"{stem}-{hashlib.sha256(content).hexdigest()[:16]}.{extension}"


def test_upload_file_streams_the_image_and_returns_its_download_url(apikley, hook, tmp_path):
    image = tmp_path / "shoe.png"
    image.write_bytes(PNG)
    url = hook.upload_file(image, "catalog/2026")
    assert url == f"{apikley.base_url}/files/catalog/2026/{unique('shoe.png', PNG)}"
    assert requests.get(url, timeout=5).content == PNG  # the emulator keeps what it was sent
    [sent] = apikley.seen("upload")
    assert f"{apikley.base_url}{sent.path}" == f"{apikley.upload_base_url}/api/file-stream-upload"
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["content-type"].startswith("multipart/form-data")
    body = sent.body
    assert b'name="uploadPath"\r\n\r\ncatalog/2026' in body
    assert f'name="fileName"\r\n\r\n{unique("shoe.png", PNG)}'.encode() in body
    assert f'filename="{unique("shoe.png", PNG)}"'.encode() in body
    assert PNG in body


def test_upload_base64_sends_a_data_url(apikley, hook):
    url = hook.upload_base64(JPEG, "catalog", file_name="mug.jpg")
    assert url == f"{apikley.base_url}/files/catalog/{unique('mug.jpg', JPEG)}"
    [sent] = apikley.seen("upload")
    assert sent.path.endswith("/api/file-base64-upload")
    assert sent.json()["base64Data"].startswith("data:image/jpeg;base64,")
    assert (sent.json()["uploadPath"], sent.json()["fileName"]) == ("catalog", unique("mug.jpg", JPEG))


def test_upload_from_url(apikley, hook, source_image_url):
    url = hook.upload_from_url(source_image_url, "catalog")
    [sent] = apikley.seen("upload")
    assert sent.path.endswith("/api/file-url-upload")
    name = sent.json()["fileName"]
    assert re.fullmatch(r"shoe-[0-9a-f]{16}\.png", name)  # the URL's name, made unique
    assert sent.json() == {"fileUrl": source_image_url, "uploadPath": "catalog", "fileName": name}
    assert url == f"{apikley.base_url}/files/catalog/{name}"
    assert requests.get(url, timeout=5).content == requests.get(source_image_url, timeout=5).content


# ---- unique names: two images never share a URL unless asked to -----------------------------------

UPLOADS = ["upload_file", "upload_base64"]


@pytest.mark.parametrize("upload", UPLOADS)
def test_two_images_with_the_same_name_in_one_folder_keep_their_own_urls(apikley, hook, upload):
    first, second = png("#000000"), png("#ffffff")
    first_url = getattr(hook, upload)(first, "catalog", file_name="shoe.png")
    second_url = getattr(hook, upload)(second, "catalog", file_name="shoe.png")
    assert first_url != second_url
    assert requests.get(first_url, timeout=5).content == first
    assert requests.get(second_url, timeout=5).content == second


def test_two_files_with_the_same_name_from_two_folders_keep_their_own_urls(apikley, hook, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "shoe.png").write_bytes(png("#000000"))
    (tmp_path / "b" / "shoe.png").write_bytes(png("#ffffff"))
    urls = [hook.upload_file(tmp_path / folder / "shoe.png", "catalog") for folder in "ab"]
    assert [requests.get(url, timeout=5).content for url in urls] == [png("#000000"), png("#ffffff")]


@pytest.mark.parametrize("upload", UPLOADS)
def test_two_unnamed_images_keep_their_own_urls(apikley, hook, upload):
    first, second = png("#000000"), JPEG
    first_url, second_url = getattr(hook, upload)(first, "catalog"), getattr(hook, upload)(second, "catalog")
    assert first_url == f"{apikley.base_url}/files/catalog/{unique('image.png', first)}"
    assert second_url == f"{apikley.base_url}/files/catalog/{unique('image.jpg', second)}"
    assert requests.get(first_url, timeout=5).content == first


def test_two_images_from_urls_with_the_same_name_keep_their_own_urls(apikley, hook):
    sources = [apikley.put_file(f"{folder}/shoe.png", png(colour)) for folder, colour in [("a", "#000"), ("b", "#fff")]]
    urls = [hook.upload_from_url(source, "catalog") for source in sources]
    assert urls[0] != urls[1]
    assert [requests.get(url, timeout=5).content for url in urls] == [png("#000"), png("#fff")]


def test_one_url_uploaded_twice_is_two_files_as_it_may_change_in_between(apikley, hook):
    source = apikley.put_file("a/shoe.png", png("#000"))
    first = hook.upload_from_url(source, "catalog", file_name="shoe.png")
    apikley.put_file("a/shoe.png", png("#fff"))
    second = hook.upload_from_url(source, "catalog", file_name="shoe.png")
    assert first != second
    assert requests.get(first, timeout=5).content == png("#000")


@pytest.mark.parametrize("upload", UPLOADS)
def test_the_same_image_uploaded_twice_gets_one_url_that_keeps_serving_it(apikley, hook, upload):
    content = png("#2c7fb8")
    first = getattr(hook, upload)(content, "catalog", file_name="shoe.png")
    second = getattr(hook, upload)(content, "catalog", file_name="shoe.png")
    assert first == second == f"{apikley.base_url}/files/catalog/{unique('shoe.png', content)}"
    assert len(apikley.seen("upload")) == 2
    assert requests.get(first, timeout=5).content == content


@pytest.mark.parametrize("upload", UPLOADS)
def test_overwrite_stores_under_the_given_name_and_replaces_it(apikley, hook, upload):
    first, second = png("#000000"), png("#ffffff")
    first_url = getattr(hook, upload)(first, "catalog", file_name="shoe.png", overwrite=True)
    second_url = getattr(hook, upload)(second, "catalog", file_name="shoe.png", overwrite=True)
    assert first_url == second_url == f"{apikley.base_url}/files/catalog/shoe.png"
    assert requests.get(first_url, timeout=5).content == second  # the first URL now serves the second image


def test_overwrite_from_a_url_sends_the_request_as_before(apikley, hook, source_image_url):
    url = hook.upload_from_url(source_image_url, "catalog", overwrite=True)
    assert url == f"{apikley.base_url}/files/catalog/shoe.png"
    [sent] = apikley.seen("upload")
    assert sent.json() == {"fileUrl": source_image_url, "uploadPath": "catalog"}


def test_overwrite_of_a_path_sends_no_name_of_its_own(apikley, hook, tmp_path):
    image = tmp_path / "shoe.png"
    image.write_bytes(PNG)
    assert hook.upload_file(image, "catalog", overwrite=True) == f"{apikley.base_url}/files/catalog/shoe.png"
    [sent] = apikley.seen("upload")
    assert b'name="fileName"' not in sent.body


def test_a_long_name_is_shortened_to_stay_a_valid_file_name(apikley, hook):
    url = hook.upload_file(PNG, "catalog", file_name="a" * 251 + ".png")
    name = url.rsplit("/", 1)[-1]
    assert len(name) == MAX_FILE_NAME_BYTES
    assert name.endswith(f"-{hashlib.sha256(PNG).hexdigest()[:16]}.png")


def test_a_long_name_is_shortened_by_its_bytes_keeping_whole_characters(apikley, hook):
    url = hook.upload_file(PNG, "catalog", file_name="é" * 124 + ".jpeg")  # 253 bytes in UTF-8
    [sent] = apikley.seen("upload")
    name = re.search(rb'name="fileName"\r\n\r\n([^\r]*)', sent.body)[1].decode()
    assert len(name.encode()) == MAX_FILE_NAME_BYTES - 1  # one more byte would split a character
    assert name == "é" * 116 + f"-{hashlib.sha256(PNG).hexdigest()[:16]}.jpeg"
    assert url.endswith(".jpeg")


def test_a_name_is_sent_nfkc_normalised(apikley, hook):
    hook.upload_file(PNG, "\uff43atalog", file_name="\ufb01le.png", overwrite=True)  # fullwidth c, fi ligature
    [sent] = apikley.seen("upload")
    assert b'name="fileName"\r\n\r\nfile.png\r\n' in sent.body
    assert b'name="uploadPath"\r\n\r\ncatalog\r\n' in sent.body


@pytest.mark.parametrize("upload", ["upload_file", "upload_base64", "upload_from_url"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_bad_file_name_is_refused_before_any_request(apikley, hook, upload, overwrite):
    source = PNG if upload != "upload_from_url" else "https://cdn.example.org/shoe.png"
    with pytest.raises(ApikleyInputError, match=r"^file_name='a/b\.png': must be a plain file name"):
        getattr(hook, upload)(source, "catalog", file_name="a/b.png", overwrite=overwrite)
    assert apikley.seen() == []


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


def test_an_upload_apikley_names_is_not_repeated_after_a_server_error(apikley, hook):
    apikley.script("upload", SERVER_ERROR)
    with pytest.raises(ApikleyError):
        hook.upload_file(PNG, "catalog", overwrite=True)
    assert len(apikley.seen("upload")) == 1


def test_a_named_upload_with_overwrite_rewrites_itself_so_it_is_repeated(apikley, hook):
    apikley.script("upload", SERVER_ERROR)
    url = hook.upload_file(PNG, "catalog", file_name="shoe.png", overwrite=True)
    assert url == f"{apikley.base_url}/files/catalog/shoe.png"
    assert len(apikley.seen("upload")) == 2


@pytest.mark.parametrize("file_name", [None, "shoe.png"])
@pytest.mark.parametrize("upload", UPLOADS)
def test_a_unique_upload_is_repeated_under_the_same_name(apikley, hook, upload, file_name):
    apikley.script("upload", SERVER_ERROR)
    url = getattr(hook, upload)(PNG, "catalog", file_name=file_name)
    assert url == f"{apikley.base_url}/files/catalog/{unique(file_name or 'image.png', PNG)}"
    assert len(apikley.seen("upload")) == 2


def test_a_unique_upload_from_a_url_is_repeated_under_the_name_it_chose_once(apikley, hook, source_image_url):
    apikley.script("upload", SERVER_ERROR)
    url = hook.upload_from_url(source_image_url, "catalog")
    first, second = (sent.json()["fileName"] for sent in apikley.seen("upload"))
    assert first == second
    assert url == f"{apikley.base_url}/files/catalog/{first}"


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


def test_store_results_names_each_copy_by_task_and_the_hooks_old_method_still_works(
    apikley, hook, source_image_url, tmp_path
):
    task = apikley.wait_until_ended(submit_edit(source_image_url))
    (stored,) = store_results(hook, task.task_id, task.result_urls, f"file://{tmp_path}/new", "png")
    with pytest.warns(AirflowProviderDeprecationWarning, match=r"results\.store_results"):
        (old,) = hook.store_results(task.task_id, task.result_urls, f"file://{tmp_path}/old", "png")
    assert stored.uri == f"file://{tmp_path}/new/{task.task_id}-0.png"
    assert (old.uri, old.sha256) == (f"file://{tmp_path}/old/{task.task_id}-0.png", stored.sha256)


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


def test_an_existing_file_with_other_bytes_is_never_overwritten(tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(JPEG)
    with pytest.raises(ApikleyResultExistsError, match="already exists with other content"):
        write_atomically(iter([PNG]), ObjectStoragePath(f"file://{target}"), source_url=RESULT_URL)
    assert target.read_bytes() == JPEG
    assert [path.name for path in tmp_path.iterdir()] == ["a.png"]  # no temporary file left either


def test_a_retry_copying_the_same_bytes_again_keeps_the_file(tmp_path):
    target = tmp_path / "a.png"
    first = write_atomically(iter([PNG]), ObjectStoragePath(f"file://{target}"), source_url=RESULT_URL)
    again = write_atomically(iter([PNG]), ObjectStoragePath(f"file://{target}"), source_url=RESULT_URL)
    assert again == first and target.read_bytes() == PNG
    assert [path.name for path in tmp_path.iterdir()] == ["a.png"]


@pytest.fixture
def umask():
    """Set the process's umask for the test, and put the one before back."""
    import os

    before = os.umask(0o022)
    os.umask(before)

    def set_umask(mask: int) -> None:
        os.umask(mask)

    yield set_umask
    os.umask(before)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_stored_result_and_a_batch_page_get_the_mode_the_umask_gives_a_new_file(tmp_path, umask, mask, mode):
    from airflow_provider_qwen.batch_manifest import write_records

    umask(mask)
    write_atomically(iter([PNG]), ObjectStoragePath(f"file://{tmp_path}/a.png"), source_url=RESULT_URL)
    write_records(ObjectStoragePath(f"file://{tmp_path}/manifest.jsonl"), [{"index": 0}])
    assert {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()} == {
        "a.png": mode,
        "manifest.jsonl": mode,
    }
