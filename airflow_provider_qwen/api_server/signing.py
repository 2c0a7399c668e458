"""
Checking that a callback comes from Apikley, and that it is not an old one sent again.

Apikley signs only the task id and the time, not the body:
``X-Webhook-Signature = base64(HMAC-SHA256(key, taskId + "." + X-Webhook-Timestamp))``.
So a receiver checks the signature, refuses stale or repeated ones, and reads the task's state
from the API rather than from the body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time

#: Seconds a signed callback stays acceptable after its timestamp, and how far ahead a clock may be.
DEFAULT_MAX_AGE_SECONDS = 300


class CallbackRejected(Exception):
    """The callback is refused; the reason is for the api-server's log, never for the caller."""


def callback_signature(key: str, task_id: str, timestamp: str) -> str:
    """The signature Apikley sends with the callback for ``task_id`` at ``timestamp``."""
    digest = hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class SignatureChecker:
    """
    Accept each correctly signed, fresh callback once.

    Signatures already accepted are remembered until they are stale anyway, so a replay within the
    window is refused as well. The memory is per api-server process; the effect of a callback is
    made idempotent separately, so a replay that reaches another process changes nothing.

    :param max_age: seconds a timestamp may lie in the past (or in the future, for clock skew).
    """

    def __init__(self, max_age: float = DEFAULT_MAX_AGE_SECONDS) -> None:
        self.max_age = max_age
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, key: str, task_id: str, timestamp: str | None, signature: str | None) -> None:
        """
        :raises CallbackRejected: when a header is missing, the signature is wrong, the timestamp is
            stale or the same signed callback was already accepted.
        """
        if not timestamp or not signature:
            raise CallbackRejected("unsigned callback, but the connection has a webhook HMAC key")
        expected = callback_signature(key, task_id, timestamp)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise CallbackRejected(f"bad signature for task {task_id}")
        try:
            sent_at = int(timestamp)
        except ValueError:
            raise CallbackRejected(f"timestamp {timestamp!r} is not Unix seconds") from None
        now = time.time()
        if abs(now - sent_at) > self.max_age:
            raise CallbackRejected(f"stale callback for task {task_id}: signed {now - sent_at:.0f} s ago")
        with self._lock:
            self._forget_older_than(now - self.max_age)
            if signature in self._seen:
                raise CallbackRejected(f"replayed callback for task {task_id}")
            self._seen[signature] = sent_at

    def _forget_older_than(self, cutoff: float) -> None:
        for seen, sent_at in list(self._seen.items()):
            if sent_at < cutoff:
                del self._seen[seen]
