"""
``GET /apikley/connections/{connection_id}/tasks/{apikley_task_id}``: an Apikley task as Airflow sees it.

The target of the "Apikley task" extra link. The task is read with the connection's key inside the
api-server, so only users allowed to read that connection may open it; the key never leaves.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from starlette.concurrency import run_in_threadpool

from airflow.api_fastapi.core_api.security import requires_access_connection

from airflow_provider_qwen.exceptions import ApikleyError, ApikleyNotFoundError
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.hooks.retries import RetryPolicy

#: A page view waits for one quick retry at most.
PAGE_RETRY_POLICY = RetryPolicy(attempts=2, initial_wait=0.5, max_wait=1.0)

router = APIRouter()


@router.get(
    "/connections/{connection_id}/tasks/{apikley_task_id}",
    dependencies=[Depends(requires_access_connection(method="GET"))],
)
async def show_task(connection_id: str, apikley_task_id: str) -> dict[str, Any]:
    """The task's state, results or failure, and when it was created and completed."""
    hook = ApikleyHook(connection_id, retry_policy=PAGE_RETRY_POLICY)
    try:
        record = await run_in_threadpool(hook.get_task, apikley_task_id)
    except ApikleyNotFoundError:
        raise HTTPException(404, f"Apikley knows no task {apikley_task_id}") from None
    except ApikleyError as err:
        raise HTTPException(502, f"Apikley could not be asked: {err}") from None
    return {
        "apikley_task_id": record.task_id,
        "model": record.model,
        "state": record.state.value,
        "result_urls": record.result_urls,
        "fail_code": record.fail_code,
        "fail_message": record.fail_message,
        "input": record.input,
        "create_time": record.create_time,
        "complete_time": record.complete_time,
        "credits_consumed": record.credits_consumed,
    }
