"""
Images in and out: what Apikley accepts for upload, and copying results to the user's storage.

Results are written to any :class:`ObjectStoragePath` (local ``file://``, S3, GCS... through
fsspec) whole or not at all, so a failure midway leaves no half-written file where a downstream
task would read it: on local disks under a temporary name linked into place once complete, on
object stores with one PUT (see :func:`write_atomically`).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_qwen.exceptions import (
    ApikleyBadResponseError,
    ApikleyError,
    ApikleyInputError,
    ApikleyResultExistsError,
)
from airflow_provider_qwen.names import check_file_name
from airflow_provider_qwen.redaction import shown_url
from airflow_provider_qwen.validation import TASK_ID_RULE, is_http_url, is_task_id

#: Apikley's limit for an uploaded source image.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: The largest result image we copy; a bigger answer is refused rather than filling a disk.
MAX_RESULT_BYTES = 50 * 1024 * 1024


def sniff_image_type(head: bytes) -> str | None:
    """Return the MIME type of a PNG, JPEG or WebP image from its first bytes, else ``None``."""
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
        raise _too_large(name, len(data))
    content_type = sniff_image_type(data[:16])
    if content_type is None:
        raise ApikleyInputError(f"file={name!r}: must be a JPEG, PNG or WebP image")
    return content_type


def read_upload(path: str | os.PathLike) -> bytes:
    """
    Return the bytes of a local image to upload, reading no further than one byte past the upload limit.

    The file is opened without waiting for a writer and checked on the open file: only a regular
    file is read, never a device (``/dev/zero`` never ends), a FIFO (which would wait for a writer)
    or a folder, and one over :data:`MAX_UPLOAD_BYTES` by its size is refused before a byte is read.

    :raises ApikleyInputError: naming the file, when it cannot be opened, is not a regular file, or is over 10 MB.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as err:
        raise ApikleyInputError(f"file={str(path)!r}: cannot be opened ({err.strerror})") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ApikleyInputError(
                f"file={str(path)!r}: must be a regular file, not a {_file_kind(info.st_mode)}; nothing was sent"
            )
        if info.st_size > MAX_UPLOAD_BYTES:
            raise _too_large(str(path), info.st_size)
        content = b""
        while len(content) <= MAX_UPLOAD_BYTES and (block := os.read(descriptor, MAX_UPLOAD_BYTES + 1 - len(content))):
            content += block
    finally:
        os.close(descriptor)
    if len(content) > MAX_UPLOAD_BYTES:  # it grew while being read
        raise _too_large(str(path), len(content))
    return content


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "folder", stat.S_ISFIFO: "FIFO", stat.S_ISCHR: "character device", stat.S_ISSOCK: "socket"}
    return next((kind for test, kind in kinds.items() if test(mode)), "block device")


def _too_large(name: str, size: int) -> ApikleyInputError:
    return ApikleyInputError(f"file={name!r} ({size} bytes): must be at most {MAX_UPLOAD_BYTES} bytes (10 MB)")


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


def named_destination(
    folder: ObjectStoragePath, name: str, index: int, count: int, extension: str
) -> ObjectStoragePath:
    """
    Where result ``index`` of ``count`` is copied under ``name``: ``<name>.<ext>``, or ``<name>-<index>.<ext>``.

    :param name: a file name checked by :func:`~airflow_provider_qwen.names.render_result_name`;
        the path is proven to stay inside ``folder`` all the same.
    :raises ApikleyBadResponseError: when it would not.
    """
    file_name = f"{name}.{extension}" if count == 1 else f"{name}-{int(index)}.{extension}"
    dest = folder / check_file_name(file_name, field="result_name")
    if dest.parent != folder:
        raise ApikleyBadResponseError(f"Refusing to write {dest}: it is not inside {folder}")
    return dest


#: File extensions by the ``output_format`` a model's input may name.
EXTENSION_BY_FORMAT = {"jpeg": "jpg", "jpg": "jpg", "webp": "webp", "png": "png"}


def result_extension(input: dict[str, Any]) -> str:
    """Return the file extension of a task's results, from the ``output_format`` of its ``input`` (PNG when none)."""
    return EXTENSION_BY_FORMAT.get(str(input.get("output_format", "png")).lower(), "png")


def as_folder(output_path: str | ObjectStoragePath) -> ObjectStoragePath:
    """``output_path`` (a folder or a file) as an :class:`ObjectStoragePath`."""
    return output_path if isinstance(output_path, ObjectStoragePath) else ObjectStoragePath(output_path)


def check_writable(output_path: str | ObjectStoragePath) -> ObjectStoragePath:
    """
    Prove that results can be written to ``output_path``, leaving nothing behind.

    Called before a task is paid for, so a folder that cannot take its results fails it for free.
    On S3 a multipart upload is begun and aborted, which takes ``s3:PutObject`` (and
    ``s3:AbortMultipartUpload``) and creates no object, so a role without ``s3:DeleteObject`` passes;
    elsewhere an empty file is written and removed.

    :raises ApikleyInputError: naming the folder and why it cannot be written.
    """
    try:
        folder = as_folder(output_path)
        probe = folder / f".apikley-write-check-{uuid.uuid4().hex}"
        if folder.protocol in ("s3", "s3a"):
            bucket, key, _ = folder.fs.split_path(probe.path)
            upload = folder.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)
            folder.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload["UploadId"])
        else:
            folder.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
    except Exception as err:  # fsspec backends raise their own kinds
        s3 = str(output_path).startswith("s3")
        needs = " (it needs s3:PutObject and s3:AbortMultipartUpload there)" if s3 else ""
        raise ApikleyInputError(
            f"output_path={str(output_path)!r}: must be a folder this task can write to{needs} "
            f"({type(err).__name__}: {err}); checked before submitting, so nothing was spent"
        ) from None
    return folder


def check_result_url(url: str) -> str:
    """
    Return ``url``, a result to download.

    :raises ApikleyInputError: unless ``url`` is an http(s) URL (never ``file:``, never a bare path).
    """
    if not is_http_url(url):
        raise ApikleyInputError(f"result_url={shown_url(url)}: must be an http:// or https:// URL")
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
        """Return a JSON-ready dict, for XCom."""
        return asdict(self)


#: Object-store parts: a result up to twice this is one PUT, a larger one a multipart upload of such
#: parts, one at a time, so a copy holds at most this much in memory whatever the result's size.
OBJECT_STORE_PART_BYTES = 8 * 1024 * 1024
#: Filesystems where a rename within a folder is atomic: results are written beside their place.
LOCAL_PROTOCOLS = frozenset({"file", "local", ""})


def write_atomically(
    chunks: Iterable[bytes], dest: ObjectStoragePath, *, source_url: str, max_bytes: int = MAX_RESULT_BYTES
) -> StoredFile:
    """
    Write an image to ``dest`` from ``chunks``: all of it, or nothing, and never over another file.

    On a local disk the bytes go to a temporary file beside ``dest``, linked into place once complete
    and checked. On an object store (S3, GCS...) they are first spooled to a local temporary file and
    checked, then written with one PUT (a multipart upload of :data:`OBJECT_STORE_PART_BYTES` parts
    for large results), which is atomic there: a failed upload leaves no object. A ``dest`` that
    exists already with the same bytes (a retry copying again) is kept; with other bytes the copy fails.

    :raises ApikleyError: when it grows past ``max_bytes``; nothing is left at ``dest``.
    :raises ApikleyBadResponseError: when the bytes are not a PNG, JPEG or WebP image.
    :raises ApikleyResultExistsError: when ``dest`` holds a different file.
    """
    if dest.protocol in LOCAL_PROTOCOLS:
        return _write_local(chunks, dest, source_url=source_url, max_bytes=max_bytes)
    return _write_object(chunks, dest, source_url=source_url, max_bytes=max_bytes)


class _Checked:
    """The running size, sha256 and first bytes of a result being written, with its limit."""

    def __init__(self, source_url: str, max_bytes: int) -> None:
        self.source_url, self.max_bytes = source_url, max_bytes
        self.digest = hashlib.sha256()
        self.size = 0
        self.head = b""

    def add(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise ApikleyError(f"Result {self.source_url} is larger than the {self.max_bytes} byte limit")
        if len(self.head) < 16:
            self.head += chunk[: 16 - len(self.head)]
        self.digest.update(chunk)
        return chunk

    def stored_as(self, dest: ObjectStoragePath) -> StoredFile:
        content_type = sniff_image_type(self.head)
        if content_type is None:
            raise ApikleyBadResponseError(f"Result {self.source_url} is not a PNG, JPEG or WebP image")
        return StoredFile(str(dest), self.source_url, self.size, content_type, self.digest.hexdigest())


def current_umask() -> int:
    """
    Return the process's umask without changing it, where the system says it (Linux's ``/proc``).

    Elsewhere it is read the only way there is, by setting it and putting it back at once.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # the strictest value in the instant between the two calls
    os.umask(mask)
    return mask


def with_default_mode(descriptor: int) -> None:
    """
    Give the open file ``descriptor`` the mode a newly created file gets: ``0o666`` less the umask.

    A temporary file is created ``0o600``; one linked or renamed into place keeps that mode, so
    results and pages would be readable by their owner only, whatever the umask asks.
    """
    os.fchmod(descriptor, 0o666 & ~current_umask())


def _write_local(chunks: Iterable[bytes], dest: ObjectStoragePath, *, source_url: str, max_bytes: int) -> StoredFile:
    folder = Path(dest.parent.path)
    folder.mkdir(parents=True, exist_ok=True)
    checked = _Checked(source_url, max_bytes)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{dest.name}.", suffix=".partial") as partial:
        for chunk in chunks:
            partial.write(checked.add(chunk))
        partial.flush()
        stored = checked.stored_as(dest)
        with_default_mode(partial.fileno())
        try:
            os.link(partial.name, dest.path)  # atomic, and never replaces a file already there
        except FileExistsError:
            _same_or_refuse(dest, stored)
    return stored


def _write_object(chunks: Iterable[bytes], dest: ObjectStoragePath, *, source_url: str, max_bytes: int) -> StoredFile:
    checked = _Checked(source_url, max_bytes)
    with tempfile.NamedTemporaryFile(prefix="apikley-result-", suffix=".partial") as spool:
        for chunk in chunks:
            spool.write(checked.add(chunk))
        spool.flush()
        stored = checked.stored_as(dest)
        options: dict[str, Any] = {"ContentType": stored.content_type}
        if dest.protocol in ("s3", "s3a"):  # an exclusive create, and parts of a bounded size
            options.update(mode="create", chunksize=OBJECT_STORE_PART_BYTES, max_concurrency=1)
        elif dest.exists():
            _same_or_refuse(dest, stored)
            return stored
        try:
            dest.fs.put_file(spool.name, dest.path, **options)
        except FileExistsError:
            _same_or_refuse(dest, stored)
    return stored


def _same_or_refuse(dest: ObjectStoragePath, stored: StoredFile) -> None:
    """Keep ``dest`` when it holds the same bytes as ``stored``; else refuse to replace it."""
    digest = hashlib.sha256()
    with dest.open("rb") as existing:
        while block := existing.read(OBJECT_STORE_PART_BYTES):
            digest.update(block)
    if digest.hexdigest() != stored.sha256:
        raise ApikleyResultExistsError(
            f"{dest} already exists with other content (sha256 {digest.hexdigest()}, not {stored.sha256}); "
            f"the result of {stored.source_url} was not written over it"
        )
