"""The emulator's memory: tasks whose state follows the clock, and files that expire."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Task:
    """
    One accepted createTask call. Its state is read off the clock, so a status query is a lookup.

    :param request: the body as it was sent (``model``, ``input`` and ``callBackUrl`` if given).
    :param queuing_at: when it leaves ``waiting``; ``generating_at`` and ``done_at`` likewise.
    :param completed: when it ended (never before ``done_at``); ``None`` while it runs.
    """

    task_id: str
    request: dict[str, Any]
    created: float
    queuing_at: float
    generating_at: float
    done_at: float
    will_fail: bool
    credits: float = 0.0
    result_urls: list[str] = field(default_factory=list)
    fail_code: str = ""
    fail_message: str = ""
    completed: float | None = None
    param: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.param = json.dumps(self.request, separators=(",", ":"))

    def state(self, now: float) -> str:
        """Return the state at ``now``: waiting → queuing → generating, then success or fail once made."""
        if self.completed is not None:
            return "fail" if self.fail_code else "success"
        if now < self.queuing_at:
            return "waiting"
        if now < self.generating_at:
            return "queuing"
        return "generating"

    def finish(self, now: float, *, result_urls: list[str] | None = None, fail: tuple[str, str] | None = None) -> None:
        """End the task with its results, or with ``(failCode, failMsg)``."""
        if fail is not None:
            self.fail_code, self.fail_message = fail
        else:
            self.result_urls = list(result_urls or [])
        self.completed = max(now, self.done_at)

    def record(self, now: float) -> dict[str, Any]:
        """Return the ``data`` of a recordInfo answer, and of a callback."""
        state = self.state(now)
        done = self.completed is not None
        if self.completed is not None:
            updated = self.completed
        else:
            updated = next((at for at in (self.generating_at, self.queuing_at) if now >= at), self.created)
        record: dict[str, Any] = {
            "taskId": self.task_id,
            "model": self.request.get("model", ""),
            "state": state,
            "param": self.param,
            "resultJson": json.dumps({"resultUrls": self.result_urls}) if state == "success" else "",
            "failCode": self.fail_code if done else "",
            "failMsg": self.fail_message if done else "",
            "costTime": int((self.completed - self.generating_at) * 1000) if self.completed is not None else 0,
            "createTime": int(self.created * 1000),
            "updateTime": int(updated * 1000),
            "completeTime": int(self.completed * 1000) if self.completed is not None else None,
        }
        if state in ("success", "fail") and self.credits:
            record["creditsConsumed"] = self.credits  # a failed task was charged when it was created
        return record


@dataclass
class StoredFile:
    """An uploaded file or a result, served until it expires."""

    content: bytes
    mime_type: str
    expires: float
    uploaded: float = field(default_factory=time.time)

    def expired(self, now: float | None = None) -> bool:
        """Whether it may no longer be served."""
        return (time.time() if now is None else now) >= self.expires


class FileStore:
    """
    Files by the path they are served at (``files/...`` or ``results/...``, no leading slash).

    Expired files answer as missing, and are swept out now and then so memory does not grow.
    """

    SWEEP_EVERY = 60.0

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}
        self._swept = time.time()

    def __len__(self) -> int:
        return len(self._files)

    def put(self, path: str, content: bytes, mime_type: str, ttl: float) -> StoredFile:
        """Store (or overwrite) the file served at ``path`` for ``ttl`` seconds."""
        now = time.time()
        if now - self._swept > self.SWEEP_EVERY:
            self._files = {key: stored for key, stored in self._files.items() if not stored.expired(now)}
            self._swept = now
        stored = StoredFile(content, mime_type, now + ttl, now)
        self._files[path] = stored
        return stored

    def get(self, path: str) -> StoredFile | None:
        """Return the file served at ``path``, unless it is unknown or expired."""
        stored = self._files.get(path)
        if stored is None or stored.expired():
            return None
        return stored
