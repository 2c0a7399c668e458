"""
A task's signed requests to the provider's app on this Airflow's api-server (run budgets, the create pace).

Each is signed with the connection's API key, sent again while the app cannot answer (unreachable,
or 503), and its answer read no further than a bound and taken only as a JSON object.
"""

from __future__ import annotations

import json
from typing import Any

import tenacity

from airflow.providers.common.compat.sdk import conf

from airflow_provider_qwen.safe_text import escape_controls


class AppBusy(Exception):
    """The app could not answer this time: the request is worth sending again."""


class AppRefused(Exception):
    """The app answered, and not with what was asked: sending again would not help."""


def app_url(path: str) -> str | None:
    """Return the URL of ``path`` of the provider's app, from ``[api] base_url``; ``None`` when that is not set."""
    from airflow_provider_qwen.api_server.urls import API_SERVER_PREFIX

    base = conf.get("api", "base_url", fallback="").rstrip("/")
    return base + API_SERVER_PREFIX + path if base else None


def post_signed(
    url: str,
    path: str,
    body: bytes,
    api_key: str,
    *,
    attempts: int,
    first_wait: float,
    timeout: float | tuple[float, float],
    max_answer_bytes: int,
) -> dict[str, Any]:
    """
    POST ``body`` to ``url`` (the app's ``path``), signed with ``api_key``; return the answer's JSON object.

    Sent ``attempts`` times in all while the app is busy, waiting ``first_wait`` seconds more before each
    next try; the same body each time, which the app answers as it did the first.

    :raises AppBusy: when the last attempt found the app unreachable or answering 503.
    :raises AppRefused: for any other answer than 200 with a JSON object of at most ``max_answer_bytes``.
    """
    for attempt in tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_incrementing(start=first_wait, increment=first_wait),
        retry=tenacity.retry_if_exception_type(AppBusy),
        reraise=True,
    ):
        with attempt:
            return _post_once(url, path, body, api_key, timeout, max_answer_bytes)
    raise AssertionError("unreachable: tenacity reraises the last attempt's error")  # pragma: no cover


def _post_once(
    url: str, path: str, body: bytes, api_key: str, timeout: float | tuple[float, float], max_answer_bytes: int
) -> dict[str, Any]:
    import requests
    import urllib3

    from airflow_provider_qwen.api_server.signing import signed_headers

    try:
        with requests.post(
            url,
            data=body,
            headers=signed_headers(api_key, path, body),
            timeout=timeout,
            allow_redirects=False,
            stream=True,
        ) as answer:
            status = answer.status_code
            text = answer.raw.read(max_answer_bytes + 1, decode_content=True)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as err:  # reading the body too
        raise AppBusy(f"it could not be reached ({type(err).__name__})") from None
    if status == 503:
        raise AppBusy("its database cannot be used right now (503)")
    if status == 401:
        raise AppRefused(
            "it answered 401: the request's signature was refused: is this connection's API key the one the "
            "api-server reads?"
        )
    if status != 200:
        raise AppRefused(f"it answered {status}: {escape_controls(text[:300].decode(errors='replace'))}")
    if len(text) > max_answer_bytes:
        raise AppRefused(f"its answer is larger than {max_answer_bytes} bytes")
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        raise AppRefused("its answer is not a JSON object")
    return parsed
