"""``/_emulator/...``: statistics, reset and run-time settings, for tests and demos; loopback callers only."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import ValidationError

from airflow_provider_qwen.emulator.settings import EmulatorSettings
from airflow_provider_qwen.emulator.state import EmulatorState


def is_loopback(host: str | None) -> bool:
    """Whether a peer address is this machine's."""
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_only(request: Request) -> None:
    if not is_loopback(request.client.host if request.client else None):
        raise HTTPException(403, "the emulator's admin endpoints answer loopback callers only")


def admin_router(state: EmulatorState) -> APIRouter:
    """Admin routes acting on ``state``; they need no key and are never faulted."""
    router = APIRouter(prefix="/_emulator", dependencies=[Depends(_loopback_only)])

    @router.get("/health")
    async def health() -> dict[str, Any]:
        return {"ok": True}

    @router.get("/stats")
    async def stats() -> dict[str, Any]:
        return state.summary()

    @router.get("/tasks")
    async def tasks() -> list[dict[str, Any]]:
        return state.task_list()

    @router.post("/reset")
    async def reset() -> dict[str, Any]:
        state.reset()
        return state.summary()

    @router.get("/config")
    async def current_config() -> dict[str, Any]:
        return state.settings.model_dump()

    @router.post("/config")
    async def configure(request: Request) -> dict[str, Any]:
        """Change settings: the fields given replace the current ones (``faults`` as a whole)."""
        try:
            changes = json.loads(await request.body())
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of settings")
            state.settings = EmulatorSettings.model_validate({**state.settings.model_dump(), **changes})
        except ValidationError as err:
            raise HTTPException(422, json.loads(err.json(include_url=False, include_context=False))) from None
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        return state.settings.model_dump()

    return router
