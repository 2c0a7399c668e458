"""The Airflow plugin that mounts the callback receiver on the api-server, under ``/apikley``."""

from __future__ import annotations

from airflow.providers.common.compat.sdk import AirflowPlugin

from airflow_provider_qwen.callbacks.receiver import create_callback_app

#: Where the receiver is mounted: callbacks go to ``<api-server>/apikley/callback``.
CALLBACK_URL_PREFIX = "/apikley"


class ApikleyCallbackPlugin(AirflowPlugin):
    """Receives Apikley's task callbacks and records each finished task as an Asset event."""

    name = "apikley_callbacks"
    fastapi_apps = [{"app": create_callback_app(), "url_prefix": CALLBACK_URL_PREFIX, "name": "Apikley callbacks"}]
