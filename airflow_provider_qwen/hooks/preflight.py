"""
Checking, before a task is paid for, that the images it names answer.

Apikley charges for a task when it accepts it, and only then finds out that its ``image_url`` is
gone: a check first refuses a dead URL for free. Each URL is asked with ``HEAD`` (a server that
refuses ``HEAD`` with 405 or 501 gets ``GET`` with ``Range: bytes=0-0``), under the same rules as
a result download (:class:`~airflow_provider_qwen.hooks.downloads.ResultHostPolicy`, at most
:data:`~airflow_provider_qwen.hooks.downloads.MAX_REDIRECTS` redirects, each hop checked, no key
sent) and within :data:`PREFLIGHT_SECONDS`. URLs on Apikley's own hosts (the API's and the upload
API's: what an upload through the connection returns) are not asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import requests

from airflow_provider_qwen.exceptions import ApikleyError, ApikleyInputError
from airflow_provider_qwen.hooks.deadline import wall_clock_limit
from airflow_provider_qwen.hooks.downloads import open_result
from airflow_provider_qwen.redaction import shown_url, without_credentials

if TYPE_CHECKING:
    from airflow_provider_qwen.hooks.apikley import ApikleyHook

#: Seconds a URL has to answer, redirects included.
PREFLIGHT_SECONDS = 10.0
#: URLs checked at once (a batch's).
CONCURRENT_CHECKS = 8
#: How many dead URLs a refusal lists before it says how many more there are.
LISTED_DEAD = 10
#: Answers to ``HEAD`` that mean "ask with GET instead".
HEAD_REFUSED = frozenset({405, 501})
#: The argument that turns the check off, named in every refusal.
SWITCH = "check_image_urls=False"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = None
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def on_apikleys_hosts(hook: ApikleyHook, url: str) -> bool:
    """Whether ``url`` is on the API's or the upload API's host, where uploads through the connection are."""
    return _origin(url) in {_origin(hook.settings.base_url), _origin(hook.upload_base_url)}


def image_url_problem(hook: ApikleyHook, url: str) -> str | None:
    """
    Return why ``url`` does not serve an image to fetch (its status, no answer in time, a refused host), or ``None``.

    Never raises for the URL's sake: every failure is the problem it returns.
    """
    try:
        with wall_clock_limit(PREFLIGHT_SECONDS) as deadline:
            try:
                status = _status(hook, url, "HEAD")
                if status in HEAD_REFUSED:
                    status = _status(hook, url, "GET", {"Range": "bytes=0-0"})
            except requests.RequestException as err:
                if deadline.expired or isinstance(err, requests.Timeout):
                    return f"no answer within {PREFLIGHT_SECONDS:g} s"
                return f"could not be reached ({type(err).__name__}: {without_credentials(str(err))})"
    except ApikleyError as err:
        return f"refused before asking: {err}"
    return f"answered HTTP {status}" if status >= 400 else None


def _status(hook: ApikleyHook, url: str, method: str, headers: dict[str, str] | None = None) -> int:
    session, policy = hook.download_session, hook.result_host_policy
    with open_result(session, url, policy, PREFLIGHT_SECONDS, method=method, headers=headers) as response:
        return response.status_code


def check_image_urls(hook: ApikleyHook, urls: Mapping[str, str]) -> None:
    """
    Refuse the task unless every image URL answers, asking :data:`CONCURRENT_CHECKS` at a time.

    :param urls: each URL by the field that names it (``image_url``, ``inputs[3].image_url``...);
        one on Apikley's own hosts is not asked, and a URL named twice is asked once.
    :raises ApikleyInputError: naming each dead URL's field (the first :data:`LISTED_DEAD`, then how
        many more), the URL without credentials and what it answered; nothing was submitted.
    """
    asked = sorted({url for url in urls.values() if not on_apikleys_hosts(hook, url)})
    if not asked:
        return
    with ThreadPoolExecutor(max_workers=min(CONCURRENT_CHECKS, len(asked)), thread_name_prefix="preflight") as pool:
        problems = dict(zip(asked, pool.map(lambda url: image_url_problem(hook, url), asked), strict=True))
    dead = [f"{field}={shown_url(url)}: {problems[url]}" for field, url in urls.items() if problems.get(url)]
    if not dead:
        return
    more = f"; and {len(dead) - LISTED_DEAD} more" if len(dead) > LISTED_DEAD else ""
    raise ApikleyInputError(
        f"{len(dead)} image URL{'s' if len(dead) != 1 else ''} did not answer as an image to fetch: "
        f"{'; '.join(dead[:LISTED_DEAD])}{more}. Nothing was submitted or paid for; give URLs Apikley can "
        f"read, or {SWITCH} for hosts this worker cannot reach"
    )
