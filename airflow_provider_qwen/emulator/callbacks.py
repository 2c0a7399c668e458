"""Telling ``callBackUrl`` that a task ended, signed the way Apikley documents it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import aiohttp

from airflow_provider_qwen.emulator.store import Task

ATTEMPTS = 3
TIMEOUT_SECONDS = 15.0


def signature(key: str, task_id: str, timestamp: str) -> str:
    """base64(HMAC-SHA256(key, taskId + "." + timestamp)): only the id and the time are signed."""
    digest = hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


async def deliver_callback(url: str, task: Task, key: str | None) -> bool:
    """POST the task's details to ``url``, retrying a few times; return whether it was taken."""
    failed = bool(task.fail_code)
    body = json.dumps(
        {"code": 501 if failed else 200, "msg": task.fail_message or "success", "data": task.record(time.time())}
    )
    for attempt in range(ATTEMPTS):
        headers = {"Content-Type": "application/json"}
        if key:
            timestamp = str(int(time.time()))
            headers |= {
                "X-Webhook-Timestamp": timestamp,
                "X-Webhook-Signature": signature(key, task.task_id, timestamp),
            }
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)) as session,
                session.post(url, data=body, headers=headers) as response,
            ):
                if response.status < 300:
                    return True
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(2**attempt)
    return False
