"""The emulator's memory: tasks whose state follows the clock, and files that expire."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Task:
    """One createTask call that was accepted. Its state is read off the clock until it ends."""

    task_id: str
    request: dict[str, Any]
    created: float
    queuing_at: float
    generating_at: float
    done_at: float
    will_fail: bool
    result_urls: list[str] = field(default_factory=list)
    fail_code: str = ""
    fail_message: str = ""
    completed: float | None = None

    def state(self, now: float) -> str:
        """waiting → queuing → generating, then success or fail once the edit has been made."""
        if self.completed is not None:
            return "fail" if self.fail_code else "success"
        if now < self.queuing_at:
            return "waiting"
        if now < self.generating_at:
            return "queuing"
        return "generating"

    def record(self, now: float) -> dict[str, Any]:
        """The ``data`` of a recordInfo answer."""
        state = self.state(now)
        done = state in ("success", "fail")
        return {
            "taskId": self.task_id,
            "model": self.request["model"],
            "state": state,
            "param": json.dumps(self.request),
            "resultJson": json.dumps({"resultUrls": self.result_urls}) if state == "success" else "",
            "failCode": self.fail_code if done else "",
            "failMsg": self.fail_message if done else "",
            "costTime": int(((self.completed or now) - self.created) * 1000),
            "createTime": int(self.created * 1000),
            "updateTime": int(min(now, self.completed or now) * 1000),
            "completeTime": int(self.completed * 1000) if self.completed else None,
        }


@dataclass
class StoredFile:
    """An uploaded file or a result, served until it expires."""

    content: bytes
    mime_type: str
    expires: float

    def expired(self) -> bool:
        return time.time() >= self.expires
