"""
How uploads are named on Apikley's file storage, where a second upload of a name replaces the first.

By default a stored name is made unique: from the image's SHA-256 when the bytes are here (the same
image always gets the same name, so a repeated upload is harmless), at random when Apikley fetches
them from a URL. :class:`~airflow_provider_qwen.hooks.apikley.ApikleyHook` sends the uploads.
"""

from __future__ import annotations

import hashlib
import os
from urllib.parse import unquote, urlsplit

from airflow_provider_qwen.exceptions import ApikleyInputError
from airflow_provider_qwen.names import MAX_FILE_NAME_BYTES, UNIQUE_SUFFIX_CHARS, check_file_name, check_upload_path

__all__ = [
    "DEFAULT_UPLOAD_STEM",
    "EXTENSIONS",
    "MAX_EXTENSION_CHARS",
    "UNIQUE_SUFFIX_CHARS",
    "content_suffix",
    "name_in_url",
    "unique_name",
    "upload_fields",
]
#: A longer "extension" (``a.b`` where ``b`` is a long word) is kept as part of the name.
MAX_EXTENSION_CHARS = 10
#: The name an upload gets when none is given nor derived, with the extension of its type.
DEFAULT_UPLOAD_STEM = "image"
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}


def upload_fields(upload_path: str, file_name: str | None) -> dict[str, str]:
    """Return the form fields that say where Apikley stores an upload, each checked."""
    fields = {"uploadPath": check_upload_path(upload_path)}
    if file_name:
        fields["fileName"] = check_file_name(file_name)
    return fields


def unique_name(name: str, suffix: str) -> str:
    """Return ``name`` (a checked file name) with ``-<suffix>`` before its extension, shortened to stay a valid one."""
    stem, extension = os.path.splitext(name)
    if len(extension) > MAX_EXTENSION_CHARS:
        stem, extension = name, ""
    room = MAX_FILE_NAME_BYTES - len(extension.encode()) - len(suffix) - 1
    stem = stem.encode()[:room].decode(errors="ignore")  # whole characters only
    return check_file_name(f"{stem}-{suffix}{extension}")


def content_suffix(content: bytes) -> str:
    """Return the suffix that names ``content``: the start of its SHA-256."""
    return hashlib.sha256(content).hexdigest()[:UNIQUE_SUFFIX_CHARS]


def name_in_url(file_url: str) -> str | None:
    """Return the last segment of ``file_url``'s path, when it is a usable file name."""
    name = unquote(urlsplit(file_url).path).rsplit("/", 1)[-1]
    try:
        return check_file_name(name)
    except ApikleyInputError:
        return None
