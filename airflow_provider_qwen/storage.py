"""
Images in and out: what Apikley accepts for upload, and copying results to the user's storage.

Results are written to any :class:`ObjectStoragePath` (local ``file://``, S3, GCS... through
fsspec) under a temporary name and renamed into place only once complete, so a failure midway
leaves no half-written file where a downstream task would read it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_qwen.exceptions import ApikleyBadResponseError, ApikleyError, ApikleyInputError
from airflow_provider_qwen.models import TASK_ID_RULE, is_http_url, is_task_id

if TYPE_CHECKING:
    from airflow_provider_qwen.hooks.apikley import ApikleyHook

#: Apikley's limit for an uploaded source image.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: The largest result image we copy; a bigger answer is refused rather than filling a disk.
MAX_RESULT_BYTES = 50 * 1024 * 1024

#: The longest file name an upload may be stored under.
MAX_FILE_NAME_CHARS = 255


def sniff_image_type(head: bytes) -> str | None:
    """The MIME type of a PNG, JPEG or WebP image from its first bytes, else ``None``."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def check_upload(data: bytes, name: str) -> str:
    """
    Check an image before it is uploaded and return its MIME type.

    :raises ApikleyInputError: when it is empty, over 10 MB, or not a JPEG, PNG or WebP image.
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise ApikleyInputError(f"file={name!r} ({len(data)} bytes): must be at most {MAX_UPLOAD_BYTES} bytes (10 MB)")
    content_type = sniff_image_type(data[:16])
    if content_type is None:
        raise ApikleyInputError(f"file={name!r}: must be a JPEG, PNG or WebP image")
    return content_type


def check_upload_path(upload_path: str) -> str:
    """:raises ApikleyInputError: unless ``upload_path`` is a non-empty path without outer slashes."""
    if not upload_path or upload_path != upload_path.strip("/") or ".." in PurePosixPath(upload_path).parts:
        raise ApikleyInputError(
            f"upload_path={upload_path!r}: must be a relative folder name without leading or trailing slash"
        )
    return upload_path


def check_file_name(file_name: str) -> str:
    """:raises ApikleyInputError: unless ``file_name`` is a plain name: no folder, no ``..``, no control character."""
    if (
        not isinstance(file_name, str)
        or not file_name.strip()
        or len(file_name) > MAX_FILE_NAME_CHARS
        or file_name in (".", "..")
        or any(char in file_name for char in "/\\")
        or any(ord(char) < 32 or ord(char) == 127 for char in file_name)
    ):
        raise ApikleyInputError(
            f"file_name={file_name!r}: must be a plain file name of at most {MAX_FILE_NAME_CHARS} characters, "
            "without '/', '\\', control characters, and not '.' or '..'"
        )
    return file_name


def result_destination(
    folder: ObjectStoragePath, apikley_task_id: str, index: int, extension: str
) -> ObjectStoragePath:
    """
    Where result ``index`` of a task is copied: ``<folder>/<task id>-<index>.<extension>``.

    The task id comes from outside, so the path is proven to stay inside ``folder``.

    :raises ApikleyBadResponseError: when the task id is not shaped like one.
    """
    if not is_task_id(apikley_task_id):
        raise ApikleyBadResponseError(f"Refusing to name a file after task id {apikley_task_id!r}: {TASK_ID_RULE}")
    dest = folder / f"{apikley_task_id}-{int(index)}.{extension}"
    if dest.parent != folder:
        raise ApikleyBadResponseError(f"Refusing to write {dest}: it is not inside {folder}")
    return dest


#: File extensions by the ``output_format`` a model's input may name.
EXTENSION_BY_FORMAT = {"jpeg": "jpg", "jpg": "jpg", "webp": "webp", "png": "png"}


def result_extension(input: dict[str, Any]) -> str:
    """The file extension of a task's results, from the ``output_format`` of its ``input`` (PNG when none)."""
    return EXTENSION_BY_FORMAT.get(str(input.get("output_format", "png")).lower(), "png")


def as_folder(output_path: str | ObjectStoragePath) -> ObjectStoragePath:
    """``output_path`` (a folder or a file) as an :class:`ObjectStoragePath`."""
    return output_path if isinstance(output_path, ObjectStoragePath) else ObjectStoragePath(output_path)


def check_writable(output_path: str | ObjectStoragePath) -> ObjectStoragePath:
    """
    Prove that results can be written to ``output_path`` by writing (and removing) an empty file there.

    Called before a task is paid for, so a folder that cannot take its results fails it for free.

    :raises ApikleyInputError: naming the folder and why it cannot be written.
    """
    try:
        folder = as_folder(output_path)
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".apikley-write-check-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except Exception as err:  # fsspec backends raise their own kinds
        raise ApikleyInputError(
            f"output_path={str(output_path)!r}: must be a folder this task can write to "
            f"({type(err).__name__}: {err}); checked before submitting, so nothing was spent"
        ) from None
    return folder


def with_stored_results(
    hook: ApikleyHook, summary: dict[str, Any], output_path: str | ObjectStoragePath
) -> dict[str, Any]:
    """
    ``summary`` (an edit's XCom value) with ``stored``: its results copied into ``output_path``.

    :raises ApikleyError: when a copy fails, naming the paid task and where its results still are.
    """
    task_id, urls = summary["apikley_task_id"], summary["result_urls"]
    try:
        stored = hook.store_results(task_id, urls, output_path, result_extension(summary["input"]))
    except (ApikleyError, OSError) as err:
        failure = err if isinstance(err, ApikleyError) else ApikleyError(f"{type(err).__name__}: {err}")
        raise failure.with_advice(
            f"Apikley task {task_id} succeeded, and its results stay at {', '.join(urls)} for about 24 hours; "
            f"only the copy to {output_path} failed."
        ) from None
    return {**summary, "stored": [item.to_dict() for item in stored]}


def check_result_url(url: str) -> str:
    """:raises ApikleyInputError: unless ``url`` is an http(s) URL (never ``file:``, never a bare path)."""
    if not is_http_url(url):
        raise ApikleyInputError(f"result_url={url!r}: must be an http:// or https:// URL")
    return url


@dataclass(frozen=True)
class StoredFile:
    """
    A result image copied to the user's storage.

    :param uri: where it is now.
    :param source_url: where it was copied from (an Apikley result URL, which expires).
    :param size: its size in bytes.
    :param content_type: its MIME type, from its content.
    :param sha256: the hex SHA-256 of its bytes.
    """

    uri: str
    source_url: str
    size: int
    content_type: str
    sha256: str

    def to_dict(self) -> dict[str, str | int]:
        """A JSON-ready dict, for XCom."""
        return asdict(self)


def write_atomically(
    chunks: Iterable[bytes], dest: ObjectStoragePath, *, source_url: str, max_bytes: int = MAX_RESULT_BYTES
) -> StoredFile:
    """
    Write an image to ``dest`` from ``chunks``: all of it, or nothing.

    :raises ApikleyError: when it grows past ``max_bytes``; nothing is left at ``dest``.
    :raises ApikleyBadResponseError: when the bytes are not a PNG, JPEG or WebP image.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.partial"
    digest = hashlib.sha256()
    size = 0
    head = b""
    try:
        with partial.open("wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise ApikleyError(f"Result {source_url} is larger than the {max_bytes} byte limit")
                if len(head) < 16:
                    head += chunk[: 16 - len(head)]
                digest.update(chunk)
                out.write(chunk)
        content_type = sniff_image_type(head)
        if content_type is None:
            raise ApikleyBadResponseError(f"Result {source_url} is not a PNG, JPEG or WebP image")
        partial.rename(dest)
    except BaseException:
        if partial.exists():
            partial.unlink()
        raise
    return StoredFile(str(dest), source_url, size, content_type, digest.hexdigest())
