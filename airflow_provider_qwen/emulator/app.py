"""The emulator as one ASGI app: Apikley's endpoints, its files, the admin endpoints, behind the fault injector."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from airflow_provider_qwen.emulator.admin import admin_router
from airflow_provider_qwen.emulator.envelope import ApikleyError, envelope
from airflow_provider_qwen.emulator.faults import FaultInjector
from airflow_provider_qwen.emulator.files import files_router
from airflow_provider_qwen.emulator.jobs import jobs_router
from airflow_provider_qwen.emulator.settings import EmulatorSettings
from airflow_provider_qwen.emulator.state import EmulatorState
from airflow_provider_qwen.emulator.uploads import uploads_router

log = logging.getLogger(__name__)


def create_app(settings: EmulatorSettings | None = None) -> FaultInjector:
    """
    Return a fresh emulator as an ASGI app; serve it with uvicorn (see :func:`~.server.run_emulator`).

    :return: the app, whose ``state`` attribute is the emulator's memory (:class:`~.state.EmulatorState`).
    """
    state = EmulatorState(settings or EmulatorSettings())
    app = FastAPI(title="Apikley emulator", docs_url=None, redoc_url=None, openapi_url=None)
    for router in (jobs_router(state), uploads_router(state), files_router(state), admin_router(state)):
        app.include_router(router)

    def error(request: Request, code: int, msg: str, http_status: int) -> JSONResponse:
        # Answers of API endpoints carry the error in the body with HTTP 200, as Apikley's do;
        # other paths (unknown ones, admin) keep the real HTTP status.
        if "emulator_endpoint" in request.scope:
            extra = {"success": False} if request.scope["emulator_endpoint"] == "upload" else {}
            return envelope(state, request, None, code, msg, **extra)
        return JSONResponse({"code": code, "msg": msg, "data": None}, status_code=http_status)

    @app.exception_handler(ApikleyError)
    async def apikley_error(request: Request, err: ApikleyError) -> JSONResponse:
        return error(request, err.code, err.msg, 200)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        if isinstance(err.detail, str):
            return error(request, err.status_code, err.detail, err.status_code)
        # structured details (the admin's settings errors) go out as data
        return JSONResponse({"code": err.status_code, "msg": "invalid", "data": err.detail}, err.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        return error(request, 422, f"Validation failed: {err.errors()}", 422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.error("unexpected error answering %s", request.url.path, exc_info=err)
        if "emulator_endpoint" in request.scope:
            state.count(request.scope["emulator_endpoint"], 500)
        return JSONResponse({"code": 500, "msg": f"Server error ({type(err).__name__})", "data": None}, 500)

    return FaultInjector(app, state)
