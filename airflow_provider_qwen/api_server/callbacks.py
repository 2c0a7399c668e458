"""
``POST /apikley/callback``: where Apikley tells Airflow that a task ended.

Mounted on the Airflow api-server by :mod:`airflow_provider_qwen.api_server.plugin`. Anyone can
reach it, so it trusts nothing it is sent: the signature is checked when the connection has a
webhook HMAC key, and the task's state is read from Apikley before anything is recorded.

Query parameters of the callback URL: ``asset`` (the URI of the Asset to update; by default
``apikley://<model>``) and ``conn_id`` (the Apikley connection; ``apikley_default``).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from airflow_provider_qwen.api_server.asset_events import UnknownAsset, default_asset_uri, record_finished_task
from airflow_provider_qwen.api_server.signing import CallbackRejected, SignatureChecker
from airflow_provider_qwen.exceptions import ApikleyError, ApikleyNotFoundError
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.hooks.envelope import MAX_ANSWER_BYTES
from airflow_provider_qwen.hooks.retries import RetryPolicy
from airflow_provider_qwen.models import QWEN_IMAGE_TO_IMAGE, TaskRecord

log = logging.getLogger(__name__)

#: The connection extra holding the key Apikley signs callbacks with (Airflow hides values of "secret" fields).
WEBHOOK_KEY_EXTRA = "webhook_secret"
#: What a task id looks like; anything else in a callback is refused as malformed.
TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: Re-reading the task must fit in Apikley's 15 s delivery timeout: one quick retry at most.
RECHECK_RETRY_POLICY = RetryPolicy(attempts=2, initial_wait=0.5, max_wait=1.0)


def task_id_from_body(body: bytes) -> str | None:
    """The task id from ``data.taskId`` (or ``data.task_id``) of a callback's JSON body."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    data = payload.get("data") if isinstance(payload, dict) else None
    task_id = (data.get("taskId") or data.get("task_id")) if isinstance(data, dict) else None
    # it reaches logs and Apikley's query string before anything vouches for it
    return task_id if isinstance(task_id, str) and TASK_ID_PATTERN.fullmatch(task_id) else None


def event_extra(record: TaskRecord) -> dict[str, Any]:
    """What a consumer DAG reads from the Asset event: the task, how it ended, its results."""
    return {
        "apikley_task_id": record.task_id,
        "state": record.state.value,
        "result_urls": record.result_urls,
        "fail_code": record.fail_code,
        "fail_message": record.fail_message,
        "model": record.model,
    }


def callback_router(checker: SignatureChecker | None = None) -> APIRouter:
    """
    The receiver's route.

    :param checker: checks signatures and remembers accepted ones; one per router by default.
    """
    checker = checker or SignatureChecker()
    router = APIRouter()

    @router.post("/callback")
    async def receive_callback(
        request: Request, asset: str | None = None, conn_id: str = ApikleyHook.default_conn_name
    ) -> Response:
        body = await request.body()
        if len(body) > MAX_ANSWER_BYTES:
            return JSONResponse({"detail": "body too large"}, status_code=413)
        task_id = task_id_from_body(body)
        if task_id is None:
            return JSONResponse({"detail": "no data.taskId in the body"}, status_code=400)
        hook = ApikleyHook(conn_id, retry_policy=RECHECK_RETRY_POLICY)
        try:
            key = (await run_in_threadpool(hook.get_connection, conn_id)).extra_dejson.get(WEBHOOK_KEY_EXTRA)
        except Exception:
            log.warning("Apikley callback for task %s names connection %r, which cannot be read", task_id, conn_id)
            return Response(status_code=401)
        if key:
            try:
                checker.check(
                    key, task_id, request.headers.get("X-Webhook-Timestamp"), request.headers.get("X-Webhook-Signature")
                )
            except CallbackRejected as rejected:
                log.warning("Apikley callback refused: %s", rejected)
                return Response(status_code=401)
        return await run_in_threadpool(_record, hook, task_id, asset)

    return router


def _record(hook: ApikleyHook, task_id: str, asset: str | None) -> Response:
    try:
        record = hook.get_task(task_id)
    except ApikleyNotFoundError:
        log.warning("Apikley callback for task %s, which Apikley does not know", task_id)
        return JSONResponse({"detail": "unknown task"}, status_code=404)
    except ApikleyError as err:
        log.warning("Apikley callback for task %s: its state could not be read: %s", task_id, err)
        return JSONResponse({"detail": "task state could not be read; send again"}, status_code=503)
    if not record.state.is_terminal:
        return JSONResponse(
            {"apikley_task_id": task_id, "recorded": False, "state": record.state.value}, status_code=202
        )
    asset_uri = asset or default_asset_uri(record.model or QWEN_IMAGE_TO_IMAGE)
    try:
        recorded = record_finished_task(asset_uri, event_extra(record))
    except UnknownAsset:
        log.warning("Apikley callback for task %s: no DAG uses asset %s", task_id, asset_uri)
        return JSONResponse({"detail": f"no DAG uses asset {asset_uri}"}, status_code=404)
    return JSONResponse({"apikley_task_id": task_id, "recorded": recorded, "state": record.state.value})
