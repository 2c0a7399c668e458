"""
Which connections a callback may use, and refused callbacks logged without a flood of lines.

Anyone can send the receiver a callback naming any connection, and each name it has not seen costs
a connection lookup (a secrets-backend call, perhaps paid), so a name is checked before anything
is looked up: it must be shaped like a connection id and, when the deployment lists the
connections callbacks may use in ``[apikley] callback_connections``, one of those or
``apikley_default``. Each kind of refusal is logged at most once per
:data:`REFUSAL_LOG_INTERVAL_SECONDS`, the next line saying how many were left out.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable

from airflow.providers.common.compat.sdk import conf

from airflow_provider_qwen.hooks import DEFAULT_CONN_ID

#: The ``[apikley]`` option listing (comma-separated) the connections a callback may use besides ``apikley_default``.
CALLBACK_CONNECTIONS_OPTION = "callback_connections"
#: A connection id a callback may name: Airflow's characters for one, ASCII only, 1 to 250 of them.
CONN_ID_PATTERN = re.compile(r"[A-Za-z0-9_#!().:/\\-]{1,250}")
CONN_ID_RULE = "1 to 250 of A-Z a-z 0-9 _ # ! ( ) . : / \\ -"
#: Seconds between two log lines about refusals of one kind.
REFUSAL_LOG_INTERVAL_SECONDS = 60.0


def allowed_callback_connections() -> frozenset[str] | None:
    """Return the connections ``[apikley] callback_connections`` lets callbacks use, or ``None`` when it is not set."""
    listed = conf.get("apikley", CALLBACK_CONNECTIONS_OPTION, fallback="") or ""
    names = frozenset(name.strip() for name in listed.split(",") if name.strip())
    return names | {DEFAULT_CONN_ID} if names else None


def connection_refusal(conn_id: str) -> str | None:
    """Say why a callback may not use connection ``conn_id``, checked without looking it up; ``None`` when it may."""
    if not CONN_ID_PATTERN.fullmatch(conn_id):
        return f"connection id {conn_id[:100]!r} is not shaped like one ({CONN_ID_RULE})"
    allowed = allowed_callback_connections()
    if allowed is not None and conn_id not in allowed:
        return f"connection {conn_id!r} is not in [apikley] {CALLBACK_CONNECTIONS_OPTION}"
    return None


class RefusalLog:
    """
    Log refusals as warnings, at most one line per kind per ``interval``; the next line counts those left out.

    :param logger: where the lines go.
    :param interval: seconds between two lines of one kind.
    :param clock: monotonic seconds.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = REFUSAL_LOG_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.interval, self.clock = logger, interval, clock
        self._lock = threading.Lock()
        self._logged_at: dict[str, float] = {}
        self._left_out: Counter[str] = Counter()

    def warning(self, kind: str, message: str, *args: object) -> None:
        """
        Log ``message % args`` unless a refusal of ``kind`` was logged within the interval.

        :param kind: one of a few fixed kinds, never a value from the request, so what is kept stays small.
        """
        with self._lock:
            now = self.clock()
            last = self._logged_at.get(kind)
            if last is not None and now - last < self.interval:
                self._left_out[kind] += 1
                return
            self._logged_at[kind] = now
            left_out = self._left_out.pop(kind, 0)
        if left_out:
            message += " (and %d more refusals of this kind since the last line, not logged)"
            args = (*args, left_out)
        self.logger.warning(message, *args)
