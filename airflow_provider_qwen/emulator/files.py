"""Serving uploaded files and results until they expire."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from airflow_provider_qwen.emulator.envelope import endpoint
from airflow_provider_qwen.emulator.state import EmulatorState


def _link_expired(request: Request) -> bool:
    expires = request.query_params.get("expires")
    if expires is None:
        return False
    try:
        return time.time() >= float(expires)
    except ValueError:
        return True


def files_router(state: EmulatorState) -> APIRouter:
    """``GET /files/...`` (uploads) and ``GET /results/<taskId>/<n>.<ext>`` (edits); 404 once expired."""
    router = APIRouter()

    @router.api_route("/files/{path:path}", methods=["GET", "HEAD"])
    @router.api_route("/results/{path:path}", methods=["GET", "HEAD"])
    async def serve_file(request: Request, path: str) -> Response:
        name = endpoint(request)
        stored = None if _link_expired(request) else state.files.get(f"{name}/{path}")
        if stored is None:
            state.count(name, 404)
            return Response(b"Not found, or expired\n", status_code=404, media_type="text/plain")
        state.count(name, 200)
        return Response(stored.content, media_type=stored.mime_type, headers={"Cache-Control": "no-store"})

    return router
