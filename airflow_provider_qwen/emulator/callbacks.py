"""Telling ``callBackUrl`` that a task ended, signed the way Apikley documents it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import aiohttp

from airflow_provider_qwen.emulator.settings import EmulatorSettings
from airflow_provider_qwen.emulator.store import Task

log = logging.getLogger(__name__)


def signature(key: str, task_id: str, timestamp: str) -> str:
    """``base64(HMAC-SHA256(key, taskId + "." + timestamp))``: only the id and the time are signed, not the body."""
    digest = hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def callback_body(task: Task, now: float) -> dict[str, Any]:
    """Return the task-details shape: envelope code 200 on success, 501 on failure, ``data`` as recordInfo's."""
    failed = bool(task.fail_code)
    return {"code": 501 if failed else 200, "msg": task.fail_message if failed else "success", "data": task.record(now)}


async def _post_once(url: str, task: Task, settings: EmulatorSettings) -> bool:
    body = json.dumps(callback_body(task, time.time()))
    headers = {"Content-Type": "application/json"}
    if settings.callback_key:
        timestamp = str(int(time.time()))  # signed afresh on every try, so a retry is not stale
        headers["X-Webhook-Timestamp"] = timestamp
        headers["X-Webhook-Signature"] = signature(settings.callback_key, task.task_id, timestamp)
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.callback_timeout)) as session,
            session.post(url, data=body, headers=headers) as response,
        ):
            return 200 <= response.status < 300
    except (aiohttp.ClientError, TimeoutError):
        return False


async def deliver_callback(url: str, task: Task, settings: EmulatorSettings) -> int:
    """
    POST the task's details to ``url``, retrying with backoff; twice over if ``callback_twice``.

    :return: how many deliveries the receiver took (a 2xx answer).
    """
    delivered = 0
    for _ in range(2 if settings.callback_twice else 1):
        for attempt in range(settings.callback_attempts):
            if await _post_once(url, task, settings):
                delivered += 1
                break
            if attempt + 1 < settings.callback_attempts:
                await asyncio.sleep(settings.callback_backoff * 2**attempt)
        else:
            log.warning("callback for task %s to %s was not taken", task.task_id, url)
    return delivered
