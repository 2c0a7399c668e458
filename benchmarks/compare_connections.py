"""The Airflow connections the benchmark DAGs use, pointing at one Apikley emulator."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

#: The HTTP connection ``bench_http_sensor`` and ``bench_python_sleep`` read.
HTTP_CONNECTION_ID = "apikley_http"


def http_connection(base_url: str, api_key: str) -> str:
    """
    An ``http`` connection to Apikley as users of providers-http write it, as JSON for ``AIRFLOW_CONN_...``.

    The key travels as a header from the connection's extra: ``HttpHook`` sends every extra field
    as a header, and would send login and password as basic auth, which Apikley does not accept.
    """
    parts = urlsplit(base_url)
    return json.dumps(
        {
            "conn_type": "http",
            "schema": parts.scheme,
            "host": parts.hostname,
            "port": parts.port,
            "extra": {"Authorization": f"Bearer {api_key}"},
        }
    )


def connection_environment(apikley_connection: str, base_url: str, api_key: str) -> dict[str, str]:
    """
    The environment variables that define both connections.

    :param apikley_connection: the ``apikley_default`` connection as JSON (the emulator makes it).
    :param base_url: the emulator's base URL.
    :param api_key: a key the emulator accepts.
    """
    return {
        "AIRFLOW_CONN_APIKLEY_DEFAULT": apikley_connection,
        f"AIRFLOW_CONN_{HTTP_CONNECTION_ID.upper()}": http_connection(base_url, api_key),
    }
