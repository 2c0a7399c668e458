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

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import requests

from airflow_provider_qwen.exceptions import ApikleyError, ApikleyInputError
from airflow_provider_qwen.hooks.deadline import wall_clock_limit
from airflow_provider_qwen.hooks.downloads import ResultHostPolicy, open_result
from airflow_provider_qwen.redaction import shown_url, without_credentials

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


def image_url_problem(session: requests.Session, policy: ResultHostPolicy, url: str) -> str | None:
    """
    Return why ``url`` does not serve an image to fetch (its status, no answer in time, a refused host), or ``None``.

    Never raises for the URL's sake: every failure is the problem it returns.
    """
    try:
        with wall_clock_limit(PREFLIGHT_SECONDS) as deadline:
            try:
                status = _status(session, policy, url, "HEAD")
                if status in HEAD_REFUSED:
                    status = _status(session, policy, url, "GET", {"Range": "bytes=0-0"})
            except requests.RequestException as err:
                if deadline.expired or isinstance(err, requests.Timeout):
                    return f"no answer within {PREFLIGHT_SECONDS:g} s"
                return f"could not be reached ({type(err).__name__}: {without_credentials(str(err))})"
    except ApikleyError as err:
        return f"refused before asking: {err}"
    return f"answered HTTP {status}" if status >= 400 else None


def _status(
    session: requests.Session, policy: ResultHostPolicy, url: str, method: str, headers: dict[str, str] | None = None
) -> int:
    with open_result(session, url, policy, PREFLIGHT_SECONDS, method=method, headers=headers) as response:
        return response.status_code


def check_image_urls(
    session: requests.Session, policy: ResultHostPolicy, urls: Mapping[str, str], own_hosts: Sequence[str]
) -> None:
    """
    Refuse the task unless every image URL answers, asking :data:`CONCURRENT_CHECKS` at a time.

    :param session: sends the requests (the hook's download session: no key, the connection's proxies).
    :param policy: where the requests may go, as for result downloads.
    :param urls: each URL by the field that names it (``image_url``, ``inputs[3].image_url``...);
        a URL named twice is asked once.
    :param own_hosts: base URLs of Apikley's own hosts (the API's, the upload API's): URLs on them
        (what an upload through the connection returns) are not asked.
    :raises ApikleyInputError: naming each dead URL's field (the first :data:`LISTED_DEAD`, then how
        many more), the URL without credentials and what it answered; nothing was submitted.
    """
    own = {_origin(base_url) for base_url in own_hosts}
    asked = sorted({url for url in urls.values() if _origin(url) not in own})
    if not asked:
        return
    with ThreadPoolExecutor(max_workers=min(CONCURRENT_CHECKS, len(asked)), thread_name_prefix="preflight") as pool:
        problems = dict(zip(asked, pool.map(lambda url: image_url_problem(session, policy, url), asked), strict=True))
    dead = [f"{field}={shown_url(url)}: {problems[url]}" for field, url in urls.items() if problems.get(url)]
    if not dead:
        return
    more = f"; and {len(dead) - LISTED_DEAD} more" if len(dead) > LISTED_DEAD else ""
    raise ApikleyInputError(
        f"{len(dead)} image URL{'s' if len(dead) != 1 else ''} did not answer as an image to fetch: "
        f"{'; '.join(dead[:LISTED_DEAD])}{more}. Nothing was submitted or paid for; give URLs Apikley can "
        f"read, or {SWITCH} for hosts this worker cannot reach"
    )
