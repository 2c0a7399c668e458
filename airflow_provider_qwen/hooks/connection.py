"""
Reading an ``apikley`` connection: the base URL, the API key and the request timeout.

Shared by the blocking and the async client, so both read a connection the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase

from airflow.providers.common.compat.sdk import mask_secret

from airflow_provider_qwen.connection_form import DEFAULT_BASE_URL, DEFAULT_TIMEOUT_SECONDS
from airflow_provider_qwen.exceptions import ApikleyConfigurationError

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Connection


class BearerAuth(AuthBase):
    """Adds ``Authorization: Bearer <key>`` to each request; its repr never shows the key."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._api_key}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(api_key=***)"


def base_url_from_connection(conn: Connection) -> str:
    """
    The API's base URL from the connection's host; an empty host means Apikley's public API.

    A host without a scheme gets ``https://``.

    :raises ApikleyConfigurationError: when the host is not an http(s) URL.
    """
    host = (conn.host or "").strip() or DEFAULT_BASE_URL
    if "://" not in host:
        host = f"{conn.schema or 'https'}://{host}"
    if conn.port:
        host = f"{host}:{conn.port}"
    parts = urlsplit(host)
    try:
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        valid = False
    if not valid:
        raise ApikleyConfigurationError(
            f"Connection {conn.conn_id!r}: host {conn.host!r} is not an http(s) base URL such as {DEFAULT_BASE_URL}"
        )
    return host.rstrip("/")


def api_key_from_connection(conn: Connection) -> str:
    """
    The API key from the connection's password, registered with Airflow's secrets masker.

    :raises ApikleyConfigurationError: when the password is empty.
    """
    api_key = (conn.password or "").strip()
    if not api_key:
        raise ApikleyConfigurationError(
            f"Connection {conn.conn_id!r} has no API key: put your Apikley API key in its password"
        )
    mask_secret(api_key)
    return api_key


def timeout_from_extra(extra: dict[str, Any]) -> float:
    """The per-request timeout in seconds from the connection's extra, or the default."""
    value = extra.get("timeout")
    if value in (None, ""):
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = 0.0
    if seconds <= 0:
        raise ApikleyConfigurationError(f"Connection extra timeout={value!r}: must be a number of seconds > 0")
    return seconds
