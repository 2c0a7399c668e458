"""The FastAPI app the provider adds to the Airflow api-server: callbacks and their waits, task pages, budgets, pace."""

from __future__ import annotations

from fastapi import FastAPI

from airflow_provider_qwen.api_server.awaited import awaited_router
from airflow_provider_qwen.api_server.budgets import budgets_router
from airflow_provider_qwen.api_server.callbacks import callback_router
from airflow_provider_qwen.api_server.create_pace import create_pace_router
from airflow_provider_qwen.api_server.signing import SignatureChecker
from airflow_provider_qwen.api_server.task_page import router as task_page_router


def create_app(checker: SignatureChecker | None = None) -> FastAPI:
    """
    Return the provider's app, to be mounted under :data:`~airflow_provider_qwen.api_server.urls.API_SERVER_PREFIX`.

    :param checker: checks callback signatures and whether they were spent; one per app by default.
    """
    app = FastAPI(title="Apikley", openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(callback_router(checker))
    app.include_router(task_page_router)
    app.include_router(budgets_router())
    app.include_router(create_pace_router())
    app.include_router(awaited_router())
    return app
