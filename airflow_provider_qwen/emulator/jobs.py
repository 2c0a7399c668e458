"""The account API: createTask, recordInfo, credit and download-url."""

from __future__ import annotations

import time
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from airflow_provider_qwen.emulator.envelope import ApikleyError, authorize, base_url, envelope, json_object, origin
from airflow_provider_qwen.emulator.fetching import stored_path
from airflow_provider_qwen.emulator.generation import new_task, run_task
from airflow_provider_qwen.emulator.models import MODELS
from airflow_provider_qwen.emulator.state import EmulatorState
from airflow_provider_qwen.emulator.validation import create_request_problem


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def jobs_router(state: EmulatorState) -> APIRouter:
    """Routes of the account API, answering from ``state``."""
    router = APIRouter()

    @router.post("/api/v1/jobs/createTask")
    async def create_task(request: Request) -> JSONResponse:
        key = authorize(state, request)
        body = await json_object(request)
        problem = create_request_problem(body)
        if problem:
            raise ApikleyError(422, f"Validation failed: {problem}")
        now = time.time()
        if not state.within_rate_limit(key, now):
            raise ApikleyError(429, "Too many new tasks: the request was dropped, please retry later")
        if state.credits < state.settings.cost_per_task:
            raise ApikleyError(402, "The current credits are insufficient. Please top up.")
        state.credits -= state.settings.cost_per_task
        state.note_create(key, now)
        task = new_task(state, body, now)
        state.tasks[task.task_id] = task
        model = MODELS[body["model"]]
        state.spawn(run_task(state, task, model.generate, model.defaults, origin(request), base_url(request)))
        return envelope(state, request, {"taskId": task.task_id, "recordId": task.task_id})

    @router.get("/api/v1/jobs/recordInfo")
    async def record_info(request: Request) -> JSONResponse:
        authorize(state, request)
        task_id = request.query_params.get("taskId")
        if not task_id:
            raise ApikleyError(400, "taskId is required")
        task = state.tasks.get(task_id)
        if task is None:
            raise ApikleyError(422, "recordInfo is null")
        return envelope(state, request, task.record(time.time()))

    @router.get("/api/v1/chat/credit")
    async def credit(request: Request) -> JSONResponse:
        authorize(state, request)
        return envelope(state, request, _number(state.credits))

    @router.post("/api/v1/common/download-url")
    async def download_url(request: Request) -> JSONResponse:
        authorize(state, request)
        url = (await json_object(request)).get("url")
        if not isinstance(url, str) or not url:
            raise ApikleyError(422, "url is required")
        path = stored_path(url)
        if not origin(request).owns(url) or state.files.get(path) is None:
            raise ApikleyError(422, "The url was not produced by this service, or it has expired")
        expires = time.time() + state.settings.download_link_ttl
        return envelope(state, request, f"{base_url(request)}/{quote(path)}?expires={expires:.3f}")

    return router
