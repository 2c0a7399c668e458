"""
``GET /apikley/connections/{connection_id}/tasks/{apikley_task_id}``: an Apikley task as Airflow sees it.

The target of the "Apikley task" extra link. The task is read with the connection's key inside the
api-server, so only users allowed to read that connection may open it; the key never leaves. Only
connections of type ``apikley`` are served (any other, or an unknown one, is a 404), and a failed
read says which kind of failure it was, never what the host answered.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from starlette.concurrency import run_in_threadpool

from airflow.api_fastapi.core_api.security import requires_access_connection
from airflow.providers.common.compat.sdk import AirflowNotFoundException

from airflow_provider_qwen.exceptions import ApikleyConfigurationError, ApikleyError, ApikleyNotFoundError
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.hooks.retries import RetryPolicy
from airflow_provider_qwen.models import TASK_ID_RULE, is_task_id

#: A page view waits for one quick retry at most.
PAGE_RETRY_POLICY = RetryPolicy(attempts=2, initial_wait=0.5, max_wait=1.0)
#: Seconds one read of the task may take.
PAGE_TIMEOUT_SECONDS = 10.0

router = APIRouter()


@router.get(
    "/connections/{connection_id}/tasks/{apikley_task_id}",
    dependencies=[Depends(requires_access_connection(method="GET"))],
)
async def show_task(connection_id: str, apikley_task_id: str) -> dict[str, Any]:
    """The task's state, results or failure, and when it was created and completed."""
    if not is_task_id(apikley_task_id):
        raise HTTPException(400, f"apikley_task_id: {TASK_ID_RULE}")
    hook = ApikleyHook(connection_id, timeout=PAGE_TIMEOUT_SECONDS)
    try:
        record = await run_in_threadpool(hook.get_task, apikley_task_id, retry_policy=PAGE_RETRY_POLICY)
    except (AirflowNotFoundException, ApikleyConfigurationError):  # unknown, another type, or unusable
        raise HTTPException(404, f"No usable Apikley connection {connection_id!r}") from None
    except ApikleyNotFoundError:
        raise HTTPException(404, f"Apikley knows no task {apikley_task_id}") from None
    except ApikleyError as err:
        # what the host answered is not repeated: only which kind of failure it was
        status = f", HTTP {err.http_status}" if err.http_status else ""
        raise HTTPException(502, f"Apikley could not be asked ({type(err).__name__}{status})") from None
    return record.describe()
