"""
The ``apikley`` connection type: how Airflow's connection form shows it, and its defaults.

Kept free of Airflow imports: the providers manager reads it through :func:`get_provider_info`
without importing the hook.
"""

from __future__ import annotations

from typing import Any

CONN_TYPE = "apikley"
DEFAULT_BASE_URL = "https://api.apikley.ru"
DEFAULT_UPLOAD_BASE_URL = "https://api.apikley.ru/file-upload"
DEFAULT_TIMEOUT_SECONDS = 60.0

#: Connection extras read by :class:`~airflow_provider_qwen.hooks.apikley.ApikleyHook`.
CONN_FIELDS: dict[str, dict] = {
    "upload_base_url": {
        "label": "Upload base URL",
        "description": (
            "Base URL of Apikley's file upload API. Empty: the Base URL followed by /file-upload, "
            "which is https://api.apikley.ru/file-upload for Apikley and the emulator's own for an emulator."
        ),
        # no default: the UI would save it, and a connection to an emulator would upload to Apikley
        "schema": {"type": ["string", "null"], "format": "url"},
    },
    "timeout": {
        "label": "Request timeout (seconds)",
        "description": "How long one HTTP request to Apikley may take before it is abandoned.",
        "schema": {"type": ["number", "null"], "minimum": 1, "default": DEFAULT_TIMEOUT_SECONDS},
    },
    "webhook_secret": {
        "label": "Webhook HMAC key",
        "description": "The key Apikley signs task callbacks with; unsigned callbacks are refused when it is set.",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
    "route_keys": {
        "label": "Callback route keys",
        "description": (
            "This deployment's own keys (comma-separated, newest first, 32+ characters each; Apikley never "
            "sees them) for callback URLs that name a connection or an asset: the first signs, all are "
            "accepted. Rotate by putting a new key first; drop the old one once no task holds its URLs."
        ),
        "schema": {"type": ["string", "null"], "format": "password"},
    },
    "private_result_hosts": {
        "label": "Private result hosts",
        "description": (
            "Comma-separated host names or IP networks on loopback or private ranges that result URLs may "
            "point to. Not needed when the base URL itself is such a host."
        ),
        "schema": {"type": ["string", "null"]},
    },
}

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["login", "schema"],
    "relabeling": {"host": "Base URL", "password": "API key"},
    "placeholders": {"host": DEFAULT_BASE_URL},
}

CONNECTION_TYPE: dict = {
    "hook-class-name": "airflow_provider_qwen.hooks.apikley.ApikleyHook",
    "hook-name": "Apikley",
    "connection-type": CONN_TYPE,
    "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
    "conn-fields": CONN_FIELDS,
}
