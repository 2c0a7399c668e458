"""
``apikley credits`` without importing Airflow, for a plain connection in ``AIRFLOW_CONN_<ID>``.

Importing Airflow takes seconds (its configuration alone), a balance one GET. When Airflow would
read the connection from its environment variable (no secrets backend is configured, which Airflow
asks first) and the connection is plain (type ``apikley``, an API key, an http(s) host, no extra
but ``timeout``), the command reads the variable and asks Apikley itself. Any other connection goes
to :class:`~airflow_provider_qwen.hooks.apikley.ApikleyHook` untouched, and so does any answer but a
balance: the hook reads it, so errors are the ones a task gets.

Nothing here imports Airflow, nor a module that does.
"""

from __future__ import annotations

import configparser
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from airflow_provider_qwen.connection_form import CONN_TYPE, DEFAULT_BASE_URL, DEFAULT_TIMEOUT_SECONDS
from airflow_provider_qwen.hooks import CREDIT_ENDPOINT, USER_AGENT

#: The fields of a connection Airflow reads from its environment variable.
CONNECTION_FIELDS = frozenset({"conn_type", "description", "host", "schema", "login", "password", "port", "extra"})
#: The most of an answer read here; a larger one goes to the hook, which refuses it.
MAX_QUICK_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class CreditAnswer:
    """An answer of the credit endpoint that is not a plain balance, for the hook to read."""

    http_status: int
    body: bytes
    charset: str | None
    retry_after: str | None


def ask_credits(conn_id: str) -> float | CreditAnswer | None:
    """
    Ask Apikley for the balance of connection ``conn_id`` when it is a plain one in ``AIRFLOW_CONN_<ID>``.

    :return: the balance; or Apikley's answer when it is not one (an error, a refusal); or ``None``
        when nothing was asked (the connection is elsewhere or not plain) or the request failed
        before an answer, so the hook asks as it always does.
    """
    request = _plain_request(conn_id)
    if request is None:
        return None
    import requests  # a third of a second: not for --help

    url, api_key, timeout = request
    headers = {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT, "Accept": "application/json"}
    try:
        with requests.get(url, headers=headers, timeout=timeout, allow_redirects=False, stream=True) as response:
            body = response.raw.read(MAX_QUICK_ANSWER_BYTES + 1, decode_content=True)
            answer = CreditAnswer(response.status_code, body, response.encoding, response.headers.get("Retry-After"))
    except requests.RequestException:
        return None
    if len(answer.body) > MAX_QUICK_ANSWER_BYTES:  # not a balance: the hook asks again and refuses it whole
        return None
    return _balance(answer)


def env_connection(conn_id: str) -> dict[str, Any] | None:
    """
    Return connection ``conn_id`` as Airflow would read it from ``AIRFLOW_CONN_<ID>`` (URI or JSON form).

    :return: its fields (``conn_type``, ``host``, ``schema``, ``login``, ``password``, ``port``,
        ``extra`` as a dict); ``None`` when the variable is unset, when a configured secrets backend
        would be asked before it, or when its value does not parse.
    """
    value = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}", "").strip()
    if not value or _secrets_backend_configured():
        return None
    try:
        fields = json.loads(value) if value.startswith("{") else _fields_from_uri(value)
        extra = fields.get("extra") or {}
        fields["extra"] = json.loads(extra) if isinstance(extra, str) else extra
        fields["port"] = int(fields["port"]) if fields.get("port") else None
        fields["conn_type"] = str(fields.get("conn_type") or "").replace("-", "_")
    except (ValueError, TypeError, AttributeError):
        return None
    if not isinstance(fields["extra"], dict) or not set(fields) <= CONNECTION_FIELDS:
        return None  # Airflow refuses a field it does not know: let it say so
    return fields


def _plain_request(conn_id: str) -> tuple[str, str, float] | None:
    """Return the credit URL, API key and timeout of a plain connection; ``None`` for any other."""
    conn = env_connection(conn_id)
    if conn is None or conn.get("conn_type") != CONN_TYPE or not set(conn["extra"]) <= {"timeout"}:
        return None
    api_key = conn.get("password")
    host = conn.get("host") or ""
    if not isinstance(api_key, str) or not api_key.strip() or not isinstance(host, str):
        return None
    host = host.strip() or DEFAULT_BASE_URL
    if "://" not in host:
        host = f"{conn.get('schema') or 'https'}://{host}"
    if conn["port"]:
        host = f"{host}:{conn['port']}"
    timeout = conn["extra"].get("timeout")
    try:
        url = urlsplit(host)
        timeout = DEFAULT_TIMEOUT_SECONDS if timeout in (None, "") else float(timeout)
    except (TypeError, ValueError):
        return None
    if url.scheme not in ("http", "https") or not url.hostname or "@" in url.netloc or not 0 < timeout < float("inf"):
        return None
    return url.geturl().rstrip("/") + CREDIT_ENDPOINT, api_key.strip(), timeout


def _balance(answer: CreditAnswer) -> float | CreditAnswer:
    """Return the balance a plain successful answer holds; else the answer itself, for the hook."""
    if answer.http_status != 200:
        return answer
    try:
        payload = json.loads(answer.body.decode(answer.charset or "utf-8"))
    except (LookupError, ValueError):
        return answer
    data = payload.get("data") if isinstance(payload, dict) and payload.get("code") == 200 else None
    if isinstance(data, bool) or not isinstance(data, int | float):
        return answer
    return float(data)


def _fields_from_uri(uri: str) -> dict[str, Any]:
    """Return a connection URI's fields, parsed as Airflow's ``Connection.from_uri`` parses them."""
    if uri.count("://") not in (1, 2):
        raise ValueError("not a connection URI")
    conn_type = urlsplit(uri).scheme
    with_protocol = uri.count("://") == 2
    rest = uri.replace(f"{conn_type}://", "" if with_protocol else "//")
    if with_protocol and any(char in rest.split("://", 1)[0] for char in "@:"):
        raise ValueError("not a connection URI")
    parts = urlsplit(rest)
    host = unquote(parts.hostname or "")
    if "/" in host:  # a host holding a path: urlsplit split it wrongly
        host = unquote(parts.netloc.rsplit("@", 1)[-1].split(":", 1)[0])
    if with_protocol and host:
        host = f"{parts.scheme}://{host}"
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return {
        "conn_type": conn_type,
        "host": host,
        "schema": unquote(parts.path[1:]),
        "login": unquote(parts.username) if parts.username else parts.username,
        "password": unquote(parts.password) if parts.password else parts.password,
        "port": parts.port,
        "extra": query.get("__extra__", query),
    }


def _secrets_backend_configured() -> bool:
    """Whether Airflow's configuration (environment or ``airflow.cfg``) may name a secrets backend."""
    if any(name.startswith("AIRFLOW__SECRETS__BACKEND") and value for name, value in os.environ.items()):
        return True
    home = os.environ.get("AIRFLOW_HOME") or "~/airflow"
    config_file = Path(os.environ.get("AIRFLOW_CONFIG") or Path(home, "airflow.cfg")).expanduser()
    config = configparser.ConfigParser(interpolation=None)
    try:
        config.read(config_file, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return True  # unreadable here: Airflow decides
    return bool(config.get("secrets", "backend", fallback="").strip())
