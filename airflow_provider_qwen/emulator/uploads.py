"""The file upload API (stream, base64, URL): temporary files that a task's ``image_url`` can name."""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
import time
import uuid
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from airflow_provider_qwen.emulator.envelope import ApikleyError, authorize, base_url, json_object, origin
from airflow_provider_qwen.emulator.fetching import FetchProblem, read_url
from airflow_provider_qwen.emulator.imaging import MAX_IMAGE_BYTES, sniff_mime
from airflow_provider_qwen.emulator.state import EmulatorState

_UNSAFE_NAME = re.compile(r"[/\\\x00-\x1f]")


def _upload_path(value: Any) -> str:
    if not isinstance(value, str) or not value or value != value.strip("/"):
        raise ApikleyError(422, "uploadPath is required, without a leading or trailing slash")
    if any(part in ("", ".", "..") or _UNSAFE_NAME.search(part) for part in value.split("/")):
        raise ApikleyError(422, f"uploadPath {value!r} is not a valid path")
    return value


def _file_name(value: Any, fallback: str | None, mime_type: str) -> str:
    name = value if value not in (None, "") else fallback
    if name in (None, ""):
        extension = (mimetypes.guess_extension(mime_type) or ".bin").lstrip(".")
        return f"{uuid.uuid4().hex}.{extension}"
    if not isinstance(name, str) or name in (".", "..") or _UNSAFE_NAME.search(name):
        raise ApikleyError(422, f"fileName {name!r} is not a valid file name")
    return name


def _iso_time(timestamp: float) -> str:
    milliseconds = int(timestamp % 1 * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{milliseconds:03d}Z"


def _check_size(size: int) -> None:
    if size == 0:
        raise ApikleyError(422, "The file is empty")
    if size > MAX_IMAGE_BYTES:
        raise ApikleyError(422, f"The file is {size} bytes, over the 10 MB limit")


def _decode_base64(value: Any) -> tuple[bytes, str | None]:
    """Return the bytes of ``base64Data`` (plain, or a ``data:`` URL) and the MIME type a data URL declares."""
    if not isinstance(value, str) or not value:
        raise ApikleyError(422, "base64Data is required")
    declared = None
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        declared = header.removeprefix("data:").split(";")[0] or None
    encoded = "".join(value.split())
    if len(encoded) * 3 // 4 > MAX_IMAGE_BYTES + 3:
        raise ApikleyError(422, "The file is over the 10 MB limit")
    try:
        return base64.b64decode(encoded, validate=True), declared
    except (binascii.Error, ValueError):
        raise ApikleyError(422, "base64Data is not valid base64") from None


def uploads_router(state: EmulatorState) -> APIRouter:
    """Upload routes under ``upload_base_path``; the files are served at ``/files/<uploadPath>/<fileName>``."""
    router = APIRouter(prefix=f"{state.settings.upload_base_path}/api")

    def stored(request: Request, content: bytes, upload_path: str, name: str, mime_type: str) -> JSONResponse:
        file_path = f"{upload_path}/{name}"
        kept = state.files.put(f"files/{file_path}", content, mime_type, state.settings.file_ttl)
        state.count("upload", 200)
        data = {
            "fileName": name,
            "filePath": file_path,
            "downloadUrl": f"{base_url(request)}/files/{quote(file_path)}",
            "fileSize": len(content),
            "mimeType": mime_type,
            "uploadedAt": _iso_time(kept.uploaded),
        }
        return JSONResponse({"success": True, "code": 200, "msg": "File uploaded successfully", "data": data})

    @router.post("/file-stream-upload")
    async def stream_upload(request: Request) -> JSONResponse:
        authorize(state, request)
        async with request.form(max_files=1, max_fields=10) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApikleyError(422, "file is required (a multipart file field)")
            upload_path = _upload_path(form.get("uploadPath"))
            content = await upload.read(MAX_IMAGE_BYTES + 1)
            _check_size(len(content))
            mime_type = sniff_mime(content, upload.filename)
            name = _file_name(form.get("fileName"), upload.filename, mime_type)
        return stored(request, content, upload_path, name, mime_type)

    @router.post("/file-base64-upload")
    async def base64_upload(request: Request) -> JSONResponse:
        authorize(state, request)
        body = await json_object(request)
        upload_path = _upload_path(body.get("uploadPath"))
        content, declared = _decode_base64(body.get("base64Data"))
        _check_size(len(content))
        mime_type = sniff_mime(content, body.get("fileName") if isinstance(body.get("fileName"), str) else None)
        if mime_type == "application/octet-stream" and declared:
            mime_type = declared
        return stored(request, content, upload_path, _file_name(body.get("fileName"), None, mime_type), mime_type)

    @router.post("/file-url-upload")
    async def url_upload(request: Request) -> JSONResponse:
        authorize(state, request)
        body = await json_object(request)
        upload_path = _upload_path(body.get("uploadPath"))
        file_url = body.get("fileUrl")
        if not isinstance(file_url, str) or not file_url:
            raise ApikleyError(422, "fileUrl is required")
        try:
            content, _ = await read_url(file_url, origin(request), state.files, state.settings.allowed_image_hosts)
        except FetchProblem as err:
            raise ApikleyError(422, f"fileUrl could not be read: {err}") from None
        _check_size(len(content))
        url_name = unquote(urlsplit(file_url).path).rsplit("/", 1)[-1] or None
        mime_type = sniff_mime(content, body.get("fileName") or url_name)
        return stored(request, content, upload_path, _file_name(body.get("fileName"), url_name, mime_type), mime_type)

    return router
