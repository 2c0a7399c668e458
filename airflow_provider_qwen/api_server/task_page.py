"""
``GET /apikley/connections/{connection_id}/tasks/{apikley_task_id}``: an Apikley task as Airflow sees it.

The target of the "Apikley task" extra link. The task is read with the connection's key inside the
api-server, so only users allowed to read that connection may open it; the key never leaves. Only
connections of type ``apikley`` are served (any other, or an unknown one, is a 404). A task is
unknown (404) only when Apikley's own envelope says so; every other failed read is one and the same
502, whatever the host did (refused the connection, answered as another service, failed TLS, took
too long), so whoever can edit a connection's host cannot use the page to probe what is there. The
api-server's log says which kind of failure it was, never what the host answered.

A browser (an ``Accept`` header that ranks HTML above JSON) gets a page: links to the source image
and the results, the state, the times, the credits and, for a failed task, Apikley's code and
message. Everything on it comes from Apikley and is treated as untrusted: all text is escaped, only
http(s) URLs become a link, and the page loads nothing: no image (an admin's browser would fetch it
from any host the answer names, a tracking pixel or an internal address alike), no script; its
Content-Security-Policy allows its own inline style, nothing else. A link is followed only when the
user clicks it, without a referrer. Any other client (``application/json``, ``*/*``, no ``Accept``)
gets the task as JSON. Errors are JSON ``{"detail": ...}`` for every client, as are the api-server's
own answers to a missing login or permission, which come before this handler.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from functools import cache
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool

from airflow.providers.common.compat.sdk import AirflowNotFoundException

from airflow_provider_qwen import _compat as compat
from airflow_provider_qwen.exceptions import ApikleyConfigurationError, ApikleyError, ApikleyNotFoundError
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from airflow_provider_qwen.hooks.retries import RetryPolicy
from airflow_provider_qwen.models import TaskRecord, TaskState
from airflow_provider_qwen.validation import TASK_ID_RULE, is_http_url, is_task_id

#: A page view waits for one quick retry at most.
PAGE_RETRY_POLICY = RetryPolicy(attempts=2, initial_wait=0.5, max_wait=1.0)
#: Seconds one read of the task may take.
PAGE_TIMEOUT_SECONDS = 10.0

#: What the HTML page may load: its own inline style only; no image, no script, no frames, no
#: forms, not framed by another page.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: The one answer to a read that failed, whatever the host did.
UNREACHABLE_DETAIL = "Apikley could not be asked about this task; the api-server's log says why"
#: Headers of the HTML page. The answer depends on ``Accept``, so caches must key on it.
HTML_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Vary": "Accept",
}
#: Media types that mean "a page", and those that mean JSON, most specific first.
HTML_TYPES = ("text/html", "application/xhtml+xml")
JSON_TYPES = ("application/json", "application/*", "*/*")

router = APIRouter()
log = logging.getLogger(__name__)


@router.get(
    "/connections/{connection_id}/tasks/{apikley_task_id}",
    dependencies=[Depends(compat.requires_access_connection(method="GET"))],
    response_model=None,
)
async def show_task(
    connection_id: str, apikley_task_id: str, accept: Annotated[str | None, Header()] = None
) -> HTMLResponse | JSONResponse:
    """
    Return the task's state, results or failure, and when it was created and completed.

    :param connection_id: the ``apikley`` connection to read the task with.
    :param apikley_task_id: the Apikley task.
    :param accept: the request's ``Accept`` header: an HTML page when it ranks HTML above JSON
        (see :func:`prefers_html`), else JSON.
    """
    record = await read_task(connection_id, apikley_task_id)
    if prefers_html(accept):
        return HTMLResponse(render_page(record, connection_id), headers=HTML_HEADERS)
    return JSONResponse(record.describe(), headers={"Vary": "Accept"})


async def read_task(connection_id: str, apikley_task_id: str) -> TaskRecord:
    """
    Return the task as Apikley reports it, read through ``connection_id``.

    :raises HTTPException: 400 for what is not a task id; 404 for a connection that is unknown, not
        of type ``apikley`` or unusable, and for a task Apikley does not know; 502 when Apikley could
        not be asked, in words that are the same whatever the failure (:data:`UNREACHABLE_DETAIL`).
    """
    if not is_task_id(apikley_task_id):
        raise HTTPException(400, f"apikley_task_id: {TASK_ID_RULE}")
    hook = ApikleyHook(connection_id, timeout=PAGE_TIMEOUT_SECONDS)
    try:
        return await run_in_threadpool(hook.get_task, apikley_task_id, retry_policy=PAGE_RETRY_POLICY)
    except (AirflowNotFoundException, ApikleyConfigurationError):  # unknown, another type, or unusable
        raise HTTPException(404, f"No usable Apikley connection {connection_id!r}") from None
    except ApikleyError as err:
        if isinstance(err, ApikleyNotFoundError) and err.from_envelope:
            raise HTTPException(404, f"Apikley knows no task {apikley_task_id}") from None
        # the log names the kind of failure only: what the host answered is not repeated anywhere
        status = f", HTTP {err.http_status}" if err.http_status else ""
        log.warning(
            "The task page could not read Apikley task %s through connection %r (%s%s)",
            apikley_task_id,
            connection_id,
            type(err).__name__,
            status,
        )
        raise HTTPException(502, UNREACHABLE_DETAIL) from None


def prefers_html(accept: str | None) -> bool:
    """
    Whether an ``Accept`` header ranks HTML above JSON.

    A browser's ``text/html,...,*/*;q=0.8`` does; ``application/json``, ``*/*``, no header, and a tie
    (``text/html, application/json``) do not. JSON's rank is that of the most specific of
    ``application/json``, ``application/*`` and ``*/*`` the header lists.
    """
    if not accept:
        return False
    ranks: dict[str, float] = {}
    for item in accept.lower().split(","):
        media_type, *params = (part.strip() for part in item.split(";"))
        rank = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    rank = float(value)
                except ValueError:
                    rank = 0.0
        ranks[media_type] = max(ranks.get(media_type, 0.0), rank if 0.0 <= rank <= 1.0 else 0.0)
    html = max((ranks[media_type] for media_type in HTML_TYPES if media_type in ranks), default=0.0)
    json_rank = next((ranks[media_type] for media_type in JSON_TYPES if media_type in ranks), 0.0)
    return html > json_rank


@cache
def _templates() -> Environment:
    environment = Environment(
        loader=PackageLoader("airflow_provider_qwen.api_server", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.tests["http_url"] = is_http_url
    return environment


def render_page(record: TaskRecord, connection_id: str) -> str:
    """
    Return the HTML page of ``record``, read through ``connection_id``.

    :param record: the task as Apikley reported it: untrusted, so escaped throughout.
    :param connection_id: the connection it was read with, shown on the page.
    """
    described = record.describe()
    prompt = record.input.get("prompt")
    return (
        _templates()
        .get_template("task_page.html")
        .render(
            task=described,
            connection_id=connection_id,
            source_url=record.input.get("image_url"),
            prompt=prompt if prompt is None else str(prompt),
            failed=record.state is TaskState.FAIL,
            created=_format_time(record.create_time),
            completed=_format_time(record.complete_time, missing="not yet"),
            duration=_format_duration(record.create_time, record.complete_time),
            credits="unknown" if record.credits_consumed is None else f"{record.credits_consumed:g}",
            record_json=json.dumps(described, indent=2, ensure_ascii=False),
        )
    )


def _format_time(milliseconds: int | None, missing: str = "unknown") -> str:
    """Return a time Apikley gives in Unix milliseconds, as ``YYYY-MM-DD HH:MM:SS UTC``."""
    if milliseconds is None:
        return missing
    try:
        return datetime.fromtimestamp(milliseconds / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):  # no date: show what Apikley said
        return f"{milliseconds} (Unix ms)"


def _format_duration(created: int | None, completed: int | None) -> str:
    """From created to completed, as ``12.3 s`` or ``2 min 05 s``."""
    if created is None or completed is None:
        return "not yet" if completed is None else "unknown"
    seconds = (completed - created) / 1000
    if seconds < 0:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"
