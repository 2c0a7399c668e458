"""The emulator's HTTP API: Apikley's endpoints, answered the way its documentation describes."""

from __future__ import annotations

import asyncio
import base64
import binascii
import random
import time
import uuid
from collections import Counter, defaultdict, deque
from typing import Annotated, Any
from urllib.parse import urlsplit

import aiohttp
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from airflow_provider_qwen.emulator.callbacks import deliver_callback
from airflow_provider_qwen.emulator.faults import FaultInjector
from airflow_provider_qwen.emulator.imaging import MAX_IMAGE_BYTES, ImageProblem, edit_image, open_image
from airflow_provider_qwen.emulator.settings import EmulatorSettings
from airflow_provider_qwen.emulator.store import StoredFile, Task
from airflow_provider_qwen.emulator.validation import create_request_problem

DOWNLOAD_LINK_TTL = 20 * 60.0


class ApikleyError(Exception):
    """An answer with an error code in the envelope."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


class EmulatorState:
    """Everything the emulator remembers; :meth:`reset` forgets it all."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.reset()

    def reset(self) -> None:
        self.rng = random.Random(self.settings.random_seed)
        self.tasks: dict[str, Task] = {}
        self.files: dict[str, StoredFile] = {}
        self.credits = self.settings.credits
        self.stats: Counter[str] = Counter()
        self.accepted_creates = 0
        self.create_times: dict[str, deque[float]] = defaultdict(deque)
        self.maintenance_until = time.time() + self.settings.maintenance_seconds
        self.background: set[asyncio.Task] = set()

    def count(self, endpoint: str, code: int | str) -> None:
        self.stats[f"{endpoint} {code}"] += 1

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def summary(self) -> dict[str, Any]:
        now = time.time()
        return {
            "requests": dict(sorted(self.stats.items())),
            "accepted_create_tasks": self.accepted_creates,
            "tasks_by_state": dict(Counter(task.state(now) for task in self.tasks.values())),
            "credits": self.credits,
        }


def envelope(
    state: EmulatorState, endpoint: str, data: Any = None, code: int = 200, msg: str = "success"
) -> JSONResponse:
    state.count(endpoint, code)
    return JSONResponse({"code": code, "msg": msg, "data": data})


def create_app(settings: EmulatorSettings | None = None) -> FaultInjector:
    """
    A fresh emulator as an ASGI app; serve it with uvicorn (see :func:`~.server.run_emulator`).

    Its memory is the returned app's ``emulator`` attribute (an :class:`EmulatorState`).
    """
    state = EmulatorState(settings or EmulatorSettings())
    upload_prefix = f"{state.settings.upload_base_path}/api"
    app = FastAPI(title="Apikley emulator", docs_url=None, redoc_url=None, openapi_url=None)

    def authorize(request: Request) -> str:
        header = request.headers.get("authorization", "")
        key = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if key not in state.settings.api_keys:
            raise ApikleyError(401, "You do not have access permissions: invalid or missing API key")
        return key

    def own_base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    async def fetch_image(url: str, base_url: str) -> bytes:
        parts = urlsplit(url)
        if parts.netloc == urlsplit(base_url).netloc and parts.path.startswith("/files/"):
            stored = state.files.get(parts.path.removeprefix("/files/"))
            if stored is None or stored.expired():
                raise ImageProblem(f"image_url {url} does not exist or has expired")
            return stored.content
        if parts.hostname not in state.settings.allowed_image_hosts:
            raise ImageProblem(f"image_url host {parts.hostname!r} is not one the emulator may fetch from")
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.get(url) as response,
        ):
            if response.status != 200:
                raise ImageProblem(f"image_url answered HTTP {response.status}")
            content = await response.content.read(MAX_IMAGE_BYTES + 1)
        return content

    async def generate(task: Task, base_url: str, callback_url: str | None) -> None:
        await asyncio.sleep(max(0.0, task.done_at - time.time()))
        task_input = task.request["input"]
        try:
            if task.will_fail:
                raise ApikleyError(501, "generation failed (emulated failure)")
            source = await fetch_image(task_input["image_url"], base_url)
            output_format = task_input.get("output_format", "png")
            result = await asyncio.to_thread(
                edit_image,
                source,
                task_input["prompt"],
                strength=task_input.get("strength", 0.8),
                seed=task_input.get("seed", 0),
                output_format=output_format,
            )
            name = f"{task.task_id}/0.{'jpg' if output_format == 'jpeg' else 'png'}"
            mime = "image/jpeg" if output_format == "jpeg" else "image/png"
            state.files[f"results/{name}"] = StoredFile(result, mime, time.time() + state.settings.file_ttl)
            task.result_urls = [f"{base_url}/results/{name}"]
        except ApikleyError as err:
            task.fail_code, task.fail_message = str(err.code), err.msg
        except ImageProblem as err:
            task.fail_code, task.fail_message = "422", str(err)
        task.completed = time.time()
        if callback_url:
            for _ in range(2 if state.settings.callback_twice else 1):
                state.spawn(deliver_callback(callback_url, task, state.settings.callback_key))

    def within_rate_limit(key: str) -> bool:
        now = time.time()
        window = state.create_times[key]
        while window and window[0] <= now - state.settings.create_rate_window:
            window.popleft()
        if len(window) >= state.settings.create_rate_limit:
            return False
        window.append(now)
        return True

    @app.exception_handler(ApikleyError)
    async def apikley_error(request: Request, err: ApikleyError) -> JSONResponse:
        endpoint = request.scope.get("emulator_endpoint", "other")
        return envelope(state, endpoint, None, err.code, err.msg)

    @app.post("/api/v1/jobs/createTask")
    async def create_task(request: Request) -> JSONResponse:
        request.scope["emulator_endpoint"] = "createTask"
        key = authorize(request)
        try:
            body = await request.json()
        except ValueError:
            raise ApikleyError(400, "request body is not JSON") from None
        problem = create_request_problem(body)
        if problem:
            raise ApikleyError(422, f"validation failed: {problem}")
        if not within_rate_limit(key):
            raise ApikleyError(429, "rate limited: too many new tasks, request dropped")
        if state.credits < state.settings.cost_per_task:
            raise ApikleyError(402, "insufficient credits")
        state.credits -= state.settings.cost_per_task
        state.accepted_creates += 1
        now = time.time()
        waiting, queuing, generating = (
            seconds * (1 + state.rng.uniform(-state.settings.jitter, state.settings.jitter))
            for seconds in state.settings.latency
        )
        task = Task(
            task_id=uuid.uuid4().hex,
            request={"model": body["model"], "input": body["input"], **_callback(body)},
            created=now,
            queuing_at=now + waiting,
            generating_at=now + waiting + queuing,
            done_at=now + waiting + queuing + generating,
            will_fail=state.rng.random() < state.settings.fail_fraction,
        )
        state.tasks[task.task_id] = task
        state.spawn(generate(task, own_base_url(request), body.get("callBackUrl")))
        return envelope(state, "createTask", {"taskId": task.task_id, "recordId": task.task_id})

    @app.get("/api/v1/jobs/recordInfo")
    async def record_info(request: Request, taskId: str | None = None) -> JSONResponse:
        request.scope["emulator_endpoint"] = "recordInfo"
        authorize(request)
        if not taskId:
            raise ApikleyError(400, "taskId is required")
        task = state.tasks.get(taskId)
        if task is None:
            raise ApikleyError(422, "recordInfo is null")
        return envelope(state, "recordInfo", task.record(time.time()))

    @app.get("/api/v1/chat/credit")
    async def credit(request: Request) -> JSONResponse:
        request.scope["emulator_endpoint"] = "credit"
        authorize(request)
        return envelope(state, "credit", state.credits)

    @app.post("/api/v1/common/download-url")
    async def download_url(request: Request) -> JSONResponse:
        request.scope["emulator_endpoint"] = "download-url"
        authorize(request)
        url = (await request.json()).get("url", "")
        parts = urlsplit(url)
        path = parts.path.lstrip("/")
        if parts.netloc != urlsplit(own_base_url(request)).netloc or path not in state.files:
            raise ApikleyError(422, "the url was not produced by this service")
        return envelope(state, "download-url", f"{url}?expires={int(time.time() + DOWNLOAD_LINK_TTL)}")

    def store_upload(request: Request, content: bytes, upload_path: str, file_name: str | None) -> JSONResponse:
        if not upload_path or upload_path != upload_path.strip("/"):
            raise ApikleyError(422, "uploadPath is required, without leading or trailing slash")
        try:
            _, mime = open_image(content)
        except ImageProblem as err:
            raise ApikleyError(422, str(err)) from None
        name = file_name or f"{uuid.uuid4().hex}.{mime.split('/')[1]}"
        path = f"{upload_path}/{name}"
        state.files[path] = StoredFile(content, mime, time.time() + state.settings.file_ttl)
        state.count("upload", 200)
        return JSONResponse(
            {
                "success": True,
                "code": 200,
                "msg": "File uploaded successfully",
                "data": {
                    "fileName": name,
                    "filePath": path,
                    "downloadUrl": f"{own_base_url(request)}/files/{path}",
                    "fileSize": len(content),
                    "mimeType": mime,
                    "uploadedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
            }
        )

    @app.post(f"{upload_prefix}/file-stream-upload")
    async def stream_upload(
        request: Request,
        file: Annotated[UploadFile, File()],
        uploadPath: Annotated[str, Form()] = "",
        fileName: Annotated[str | None, Form()] = None,
    ) -> JSONResponse:
        request.scope["emulator_endpoint"] = "upload"
        authorize(request)
        content = await file.read(MAX_IMAGE_BYTES + 1)
        return store_upload(request, content, uploadPath, fileName or file.filename)

    @app.post(f"{upload_prefix}/file-base64-upload")
    async def base64_upload(request: Request) -> JSONResponse:
        request.scope["emulator_endpoint"] = "upload"
        authorize(request)
        body = await request.json()
        encoded = str(body.get("base64Data", ""))
        try:
            content = base64.b64decode(
                encoded.split(",", 1)[1] if encoded.startswith("data:") else encoded, validate=True
            )
        except (binascii.Error, IndexError):
            raise ApikleyError(422, "base64Data is not valid base64") from None
        return store_upload(request, content, str(body.get("uploadPath", "")), body.get("fileName"))

    @app.post(f"{upload_prefix}/file-url-upload")
    async def url_upload(request: Request) -> JSONResponse:
        request.scope["emulator_endpoint"] = "upload"
        authorize(request)
        body = await request.json()
        try:
            content = await fetch_image(str(body.get("fileUrl", "")), own_base_url(request))
        except ImageProblem as err:
            raise ApikleyError(422, str(err)) from None
        return store_upload(request, content, str(body.get("uploadPath", "")), body.get("fileName"))

    @app.get("/files/{path:path}")
    @app.get("/results/{path:path}")
    async def serve_file(request: Request, path: str) -> Response:
        endpoint = "results" if request.url.path.startswith("/results/") else "files"
        key = f"results/{path}" if endpoint == "results" else path
        stored = state.files.get(key)
        if stored is None or stored.expired():
            state.count(endpoint, 404)
            return Response(status_code=404, content=b"expired or unknown")
        state.count(endpoint, 200)
        return Response(content=stored.content, media_type=stored.mime_type)

    @app.get("/_emulator/stats")
    async def stats() -> dict[str, Any]:
        return state.summary()

    @app.post("/_emulator/reset")
    async def reset() -> dict[str, Any]:
        for task in list(state.background):
            task.cancel()
        state.reset()
        return state.summary()

    @app.post("/_emulator/config")
    async def configure(request: Request) -> dict[str, Any]:
        state.settings = EmulatorSettings.model_validate({**state.settings.model_dump(), **(await request.json())})
        return state.settings.model_dump()

    return FaultInjector(app, state)


def _callback(body: dict[str, Any]) -> dict[str, Any]:
    return {"callBackUrl": body["callBackUrl"]} if body.get("callBackUrl") else {}
