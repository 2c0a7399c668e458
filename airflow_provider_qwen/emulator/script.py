"""
Exact answers on demand, and a journal of what callers sent.

A test that needs one particular answer (a code Apikley rarely gives, a body cut short, a header)
queues it for an endpoint; the next request to that endpoint gets it instead of the emulator's own
answer, and a scripted ``createTask`` creates nothing. Once an endpoint's queue is empty, the
emulator answers for itself again.

>>> emulator.script("recordInfo", envelope(code=500, msg="Server error"), html_page(status=502))  # doctest: +SKIP
>>> emulator.seen("createTask")[-1].json()["input"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_qwen.emulator.store import Task

#: Requests the journal keeps, oldest forgotten first.
JOURNAL_LENGTH = 500
#: Request bodies longer than this are journalled without their bytes (uploads).
JOURNALLED_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class ScriptedAnswer:
    """
    One answer, exactly as given.

    :param body: the bytes sent.
    :param status: the HTTP status.
    :param content_type: the ``Content-Type`` header.
    :param headers: further headers.
    :param delay: seconds to wait before answering.
    :param drop: close the connection without answering.
    :param times: how many requests get it; ``None`` answers every request from now on.
    """

    body: bytes = b""
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    times: int | None = 1


def envelope(
    data: Any = None, *, code: int = 200, msg: str = "success", status: int = 200, **options: Any
) -> ScriptedAnswer:
    """Apikley's ``{"code", "msg", "data"}`` envelope; ``options`` as for :class:`ScriptedAnswer`."""
    return json_answer({"code": code, "msg": msg, "data": data}, status=status, **options)


def json_answer(payload: Any, **options: Any) -> ScriptedAnswer:
    """Any JSON document, envelope or not."""
    return ScriptedAnswer(json.dumps(payload).encode(), **options)


def html_page(status: int = 502, **options: Any) -> ScriptedAnswer:
    """Return a proxy's HTML error page, as a gateway in front of Apikley sends one."""
    page = b"<html><head><title>Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
    return ScriptedAnswer(page, status=status, content_type="text/html; charset=utf-8", **options)


def dropped(**options: Any) -> ScriptedAnswer:
    """Return the connection closed with nothing sent."""
    return ScriptedAnswer(drop=True, **options)


def created(task_id: str, **options: Any) -> ScriptedAnswer:
    """Return a createTask answer naming ``task_id``."""
    return envelope({"taskId": task_id, "recordId": task_id}, **options)


def task_record(
    task_id: str,
    state: str,
    *,
    result_urls: list[str] | None = None,
    fail_code: str = "501",
    fail_message: str = "The edit could not be made",
    input: dict[str, Any] | None = None,
    model: str = "qwen/image-to-image",
) -> dict[str, Any]:
    """
    Return the ``data`` of a recordInfo answer for a task in ``state``, shaped as the emulator shapes its own.

    :param state: ``waiting``, ``queuing``, ``generating``, ``success`` or ``fail``.
    """
    now = time.time()
    request = {"model": model, "input": input or {"prompt": "sepia", "image_url": "https://example.org/in.png"}}
    queuing_at, generating_at = {"waiting": (now + 1, now + 2), "queuing": (now - 1, now + 1)}.get(
        state, (now - 2, now - 1)
    )
    task = Task(task_id, request, now - 3, queuing_at, generating_at, now, will_fail=state == "fail", credits=1.0)
    if state == "success":
        task.finish(now, result_urls=result_urls or [])
    elif state == "fail":
        task.finish(now, fail=(fail_code, fail_message))
    return task.record(now)


@dataclass(frozen=True)
class SeenRequest:
    """A request as the emulator received it."""

    endpoint: str
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)

    def json(self) -> Any:
        """Return the body, parsed."""
        return json.loads(self.body)


class Script:
    """Queued answers by endpoint, and the journal of requests."""

    def __init__(self) -> None:
        self.queues: dict[str, deque[ScriptedAnswer]] = defaultdict(deque)
        self.journal: deque[SeenRequest] = deque(maxlen=JOURNAL_LENGTH)

    def add(self, endpoint: str, answers: tuple[ScriptedAnswer, ...]) -> None:
        """Queue ``answers`` for ``endpoint``, after those already queued."""
        self.queues[endpoint].extend(answers)

    def next_answer(self, endpoint: str) -> ScriptedAnswer | None:
        """Return the answer the next request to ``endpoint`` gets, if one is queued; spends one of its ``times``."""
        queue = self.queues.get(endpoint)
        if not queue:
            return None
        answer = queue[0]
        if answer.times is not None:
            if answer.times <= 1:
                queue.popleft()
            else:
                queue[0] = ScriptedAnswer(**{**answer.__dict__, "times": answer.times - 1})
        return answer

    def seen(self, endpoint: str | None = None) -> list[SeenRequest]:
        """Journalled requests, oldest first; only ``endpoint``'s when given."""
        return [request for request in self.journal if endpoint is None or request.endpoint == endpoint]
