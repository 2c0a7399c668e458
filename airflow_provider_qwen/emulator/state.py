"""Everything one emulator remembers: settings, tasks, files, credits, rate limit windows, statistics."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Coroutine
from typing import Any

from airflow_provider_qwen.emulator.script import Script
from airflow_provider_qwen.emulator.settings import EmulatorSettings
from airflow_provider_qwen.emulator.store import FileStore, Task


class EmulatorState:
    """
    The memory of one emulator; :meth:`reset` forgets it all.

    ``settings`` may be replaced at run time (by ``/_emulator/config`` or by assigning it): a new
    ``maintenance_seconds`` starts a maintenance window from that moment, and a new ``random_seed``
    reseeds the random draws. ``upload_base_path`` cannot change once the routes exist.

    :ivar stats: requests by ``"<endpoint> <code in the JSON body>"``, or ``"<endpoint> fault:<kind>"``
        for an injected fault (``api_codes`` in :meth:`summary`).
    :ivar http_statuses: requests by ``"<endpoint> <HTTP status>"``.
    :ivar script: answers queued by endpoint, and the journal of requests (see :mod:`~.script`).
    """

    def __init__(self, settings: EmulatorSettings) -> None:
        self._settings = settings
        self.rng = random.Random(settings.random_seed)
        self.maintenance_until = time.time() + settings.maintenance_seconds
        self.background: set[asyncio.Task[Any]] = set()
        self.reset()

    @property
    def settings(self) -> EmulatorSettings:
        """The settings in force; read on every request, so a change applies at once."""
        return self._settings

    @settings.setter
    def settings(self, new: EmulatorSettings) -> None:
        old = self._settings
        if new.upload_base_path != old.upload_base_path:
            raise ValueError("upload_base_path is fixed once the emulator runs")
        self._settings = new
        if new.maintenance_seconds != old.maintenance_seconds:
            self.maintenance_until = time.time() + new.maintenance_seconds
        if new.random_seed != old.random_seed:
            self.rng = random.Random(new.random_seed)

    def reset(self) -> None:
        """Forget tasks, files, statistics, rate limit windows and scripted answers; restore the starting credits."""
        for task in list(self.background):
            task.cancel()
        self.background = set()
        self.rng = random.Random(self.settings.random_seed)
        self.tasks: dict[str, Task] = {}
        self.files = FileStore()
        self.credits = self.settings.credits
        self.stats: Counter[str] = Counter()
        self.http_statuses: Counter[str] = Counter()
        self.slowed: Counter[str] = Counter()
        self.accepted_creates = 0
        self.create_times: dict[str, deque[float]] = defaultdict(deque)
        self.script = Script()

    def in_maintenance(self, now: float) -> bool:
        """Whether the maintenance window is open."""
        return now < self.maintenance_until

    def count(self, endpoint: str, code: int | str) -> None:
        """Count one answer of ``endpoint`` by its body code (or fault)."""
        self.stats[f"{endpoint} {code}"] += 1

    def within_rate_limit(self, key: str, now: float) -> bool:
        """Whether ``key`` may create one more task now (the caller records it with :meth:`note_create`)."""
        window = self.create_times[key]
        while window and window[0] <= now - self.settings.create_rate_window:
            window.popleft()
        return len(window) < self.settings.create_rate_limit

    def note_create(self, key: str, now: float) -> None:
        """Record an accepted task against ``key``'s rate limit."""
        self.create_times[key].append(now)
        self.accepted_creates += 1

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run ``coroutine`` in the background, keeping a reference so it is not collected (or reset)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def requests_by_endpoint(self) -> Counter[str]:
        """Count the requests answered (or faulted) by endpoint, whatever the answer."""
        counts: Counter[str] = Counter()
        for key, count in self.stats.items():
            counts[key.split(" ", 1)[0]] += count
        return counts

    def task_list(self) -> list[dict[str, Any]]:
        """
        Return what ``GET /_emulator/tasks`` answers: every accepted task, oldest first.

        Each is ``{"taskId", "request", "createTime", "completeTime", "state"}``: the createTask body
        as it was sent (``model``, ``input`` and ``callBackUrl`` if given), and when it was created
        and when it ended (Unix ms; ``None`` while it runs), so a test can count the tasks a caller
        paid for, tell which request each one answered, and time what followed its end.
        """
        now = time.time()
        return [
            {
                "taskId": task.task_id,
                "request": task.request,
                "createTime": int(task.created * 1000),
                "completeTime": None if task.completed is None else int(task.completed * 1000),
                "state": task.state(now),
            }
            for task in sorted(self.tasks.values(), key=lambda task: task.created)
        ]

    def summary(self) -> dict[str, Any]:
        """
        Return what ``GET /_emulator/stats`` answers.

        ``api_codes`` counts the ``code`` in each answer's JSON body (Apikley answers an error such as
        a refused key with HTTP 200 and the error's code in the body), or the fault injected;
        ``http_statuses`` counts the HTTP status lines; ``requests`` totals both by endpoint.
        """
        now = time.time()
        return {
            "requests": dict(sorted(self.requests_by_endpoint().items())),
            "api_codes": dict(sorted(self.stats.items())),
            "http_statuses": dict(sorted(self.http_statuses.items())),
            "slowed": dict(sorted(self.slowed.items())),
            "accepted_create_tasks": self.accepted_creates,
            "tasks_by_state": dict(Counter(task.state(now) for task in self.tasks.values())),
            "credits": self.credits,
            "files": len(self.files),
            "maintenance": self.in_maintenance(now),
        }
