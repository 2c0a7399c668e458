"""
The Airflow plugin that mounts the provider's app on the api-server, under ``/apikley``.

Callbacks go to ``<api-server>/apikley/callback``; task pages are under
``<api-server>/apikley/connections/<conn id>/tasks/<Apikley task id>``.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.providers.common.compat.sdk import AirflowPlugin

from airflow_provider_qwen.api_server.urls import API_SERVER_PREFIX


class ApikleyPlugin(AirflowPlugin):
    """Receives Apikley's task callbacks as Asset events, and shows Apikley tasks to Airflow users."""

    name = "apikley"

    @cached_property  # Airflow declares a list attribute; a property builds the app only when read
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """
        Return the app, built when the api-server asks for it.

        Airflow loads plugins in every process, task processes included, and the app pulls in the
        api-server's security module: ~2 s of imports.
        """
        from airflow_provider_qwen.api_server.app import create_app

        return [{"app": create_app(), "url_prefix": API_SERVER_PREFIX, "name": "Apikley"}]
