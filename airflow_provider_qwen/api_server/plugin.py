"""
The Airflow plugin that mounts the provider's app on the api-server, under ``/apikley``.

Callbacks go to ``<api-server>/apikley/callback``; task pages are under
``<api-server>/apikley/connections/<conn id>/tasks/<Apikley task id>``.
"""

from __future__ import annotations

from airflow.providers.common.compat.sdk import AirflowPlugin

from airflow_provider_qwen.api_server.app import create_app
from airflow_provider_qwen.links import API_SERVER_PREFIX


class ApikleyPlugin(AirflowPlugin):
    """Receives Apikley's task callbacks as Asset events, and shows Apikley tasks to Airflow users."""

    name = "apikley"
    fastapi_apps = [{"app": create_app(), "url_prefix": API_SERVER_PREFIX, "name": "Apikley"}]
