"""
The create pace, as a task reaches it: a slot for its create, shared with every task of the deployment.

Apikley takes ``creates_per_window`` creates per account in any ``window_seconds`` (20 per 10 s by
default) and answers 429 past it. Mapped edits start together on many workers, so each would meet
the limit alone and back off. Instead, right before its create, an edit takes its connection's
next slot from the provider's app on this Airflow's api-server (``[api] base_url``,
:mod:`airflow_provider_qwen.api_server.create_pace`), signed with the connection's API key, and
waits for it: the connection's creates go out evenly spaced, whichever worker sends them.

The pace only delays a create. When it cannot be used (``[api] base_url`` unset, the api-server
unreachable or refusing, an answer that makes no sense), the edit creates at once, as it would
without it, backing off if Apikley answers 429, after one warning in the task's log. The
connection's extra ``shared_create_pace`` set to false turns it off.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeGuard

from airflow_provider_qwen.app_requests import AppBusy, AppRefused, app_url, post_signed
from airflow_provider_qwen.redaction import without_credentials

if TYPE_CHECKING:
    from airflow_provider_qwen.hooks.apikley import ApikleyHook
    from airflow_provider_qwen.hooks.retries import Log

#: Seconds to connect to the api-server, and to wait for its answer: a pace that is slow to answer
#: is given up soon, since creating without it is always allowed.
PACE_TIMEOUT_SECONDS = (3.05, 5.0)
#: Requests sent for one slot while the api-server cannot be reached or answers 503.
PACE_ATTEMPTS = 3
#: The most of an answer read: the pace's is under a hundred bytes.
MAX_PACE_ANSWER_BYTES = 4096
#: The longest wait an answer may ask for; a longer one is taken for a fault, and the edit creates at once.
MAX_PACE_WAIT_SECONDS = 3600.0
#: A wait longer than this many of the connection's windows is logged, with how long and why.
LONG_WAIT_WINDOWS = 3


class CreatePace:
    """
    The create pace of a task's connection, shared with every task of the deployment that uses it.

    :param hook: the task's hook: its connection names the pace, sets its rate and signs the request.
    :param log: the task's log.
    :param sleep: waits; ``time.sleep`` unless a test says otherwise.
    """

    def __init__(self, hook: ApikleyHook, log: Log, sleep: Callable[[float], None] | None = None) -> None:
        self.hook = hook
        self.log = log
        self._sleep = sleep or time.sleep
        self._warned = False

    def wait_for_slot(self) -> float:
        """
        Take the connection's next create slot and wait until it opens; return the seconds waited.

        Never raises for the pace itself: when it cannot be used, this warns (once) and returns at
        once, so the create goes out as it would without it.
        """
        settings = self.hook.settings
        if not settings.shared_create_pace:
            return 0.0
        from airflow_provider_qwen.api_server.urls import CREATE_PACE_RESERVE_PATH

        url = app_url(CREATE_PACE_RESERVE_PATH)
        if url is None:
            self._fall_back("[api] base_url is not set, and the pace is kept on the api-server")
            return 0.0
        # one id for every attempt: the pace answers a request it has seen with the slot it gave
        body = json.dumps({"conn_id": settings.conn_id, "request_id": uuid.uuid4().hex}, separators=(",", ":"))
        try:
            answer = post_signed(
                url,
                CREATE_PACE_RESERVE_PATH,
                body.encode(),
                settings.api_key,
                attempts=PACE_ATTEMPTS,
                first_wait=0.25,
                timeout=PACE_TIMEOUT_SECONDS,
                max_answer_bytes=MAX_PACE_ANSWER_BYTES,
            )
            wait, spacing = _slot_from_answer(answer)
        except (AppBusy, AppRefused) as err:
            self._fall_back(f"the pace at {without_credentials(url)} cannot be used: {err}")
            return 0.0
        if wait > LONG_WAIT_WINDOWS * settings.window_seconds:
            self.log.info(
                "Waiting %.1f s for this edit's create slot: the creates through connection %r are spaced %.2f s "
                "apart across the deployment (creates_per_window=%d in window_seconds=%g), and about %d are ahead",
                wait,
                settings.conn_id,
                spacing,
                settings.creates_per_window,
                settings.window_seconds,
                round(wait / spacing),
            )
        self._sleep(wait)
        return wait

    def _fall_back(self, why: str) -> None:
        if self._warned:
            return
        self._warned = True
        self.log.warning(
            "Creating without the create pace this deployment's edits share (%s): this edit creates at once, "
            "and backs off if Apikley answers 429. The extra shared_create_pace set to false on connection %r "
            "creates without asking.",
            why,
            self.hook.apikley_conn_id,
        )


def _slot_from_answer(parsed: dict[str, Any]) -> tuple[float, float]:
    """Return ``wait_seconds`` and ``spacing_seconds`` from the pace's answer, checked."""
    wait, spacing = parsed.get("wait_seconds"), parsed.get("spacing_seconds")
    if not _is_seconds(wait) or not 0 <= wait <= MAX_PACE_WAIT_SECONDS:
        raise AppRefused(f"its answer's wait_seconds={wait!r:.40} is not from 0 to {MAX_PACE_WAIT_SECONDS:g} s")
    if not _is_seconds(spacing) or not spacing > 0:
        raise AppRefused(f"its answer's spacing_seconds={spacing!r:.40} is not a positive number of seconds")
    return float(wait), float(spacing)


def _is_seconds(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
