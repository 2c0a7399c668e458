"""
Checking that a callback comes from Apikley, and that it is not an old one sent again.

Apikley signs only the task id and the time, not the body:
``X-Webhook-Signature = base64(HMAC-SHA256(key, taskId + "." + X-Webhook-Timestamp))``.
So a receiver checks the signature, refuses stale ones and those of a delivery it took already,
and reads the task's state from the API rather than from the body. What the callback URL names (a
connection, an asset) is signed by the deployment itself: see :func:`route_token`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: Seconds a signed callback stays acceptable after its timestamp, and how far ahead a clock may be.
DEFAULT_MAX_AGE_SECONDS = 300


class CallbackRejected(Exception):
    """
    The callback is refused; the reason is for the api-server's log, never for the caller.

    :param reason: why, for the log.
    :param kind: the kind of refusal, a fixed word: the log has at most one line of each kind a minute.
    """

    def __init__(self, reason: str, kind: str = "refused") -> None:
        super().__init__(reason)
        self.kind = kind


def callback_signature(key: str, task_id: str, timestamp: str) -> str:
    """Return the signature Apikley sends with the callback for ``task_id`` at ``timestamp``."""
    digest = hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


#: The headers of a request a task or trigger signs for the provider's app.
TIMESTAMP_HEADER, SIGNATURE_HEADER = "X-Apikley-Timestamp", "X-Apikley-Signature"


def request_signature(api_key: str, path: str, timestamp: str, body: bytes) -> str:
    """
    Return the signature of a request to the provider's app: HMAC-SHA256 under the connection's API key.

    It covers the endpoint's path, the time and the whole body (which names the connection), so
    only a holder of that connection's API key, who can spend its credits anyway, can reserve,
    settle, pace creates or read deliveries for it, and a request cannot be moved to another endpoint or
    connection. (Its message starts ``apikley-budget``, as it did when budgets were its only use.)
    """
    message = b"apikley-budget\n" + path.encode() + b"\n" + timestamp.encode() + b"\n" + body
    return base64.b64encode(hmac.new(api_key.encode(), message, hashlib.sha256).digest()).decode()


def signed_headers(api_key: str, path: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """Return the headers of a JSON request to ``path`` of the provider's app, signed now with ``api_key``."""
    timestamp = str(int(time.time() if now is None else now))
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: request_signature(api_key, path, timestamp, body),
    }


def route_token(key: str, conn_id: str, asset_uri: str) -> str:
    """
    Return the deployment's own signature over a callback URL's ``conn_id`` and ``asset``.

    Made with one of the connection's ``route_keys``, which Apikley never sees (unlike the webhook
    key it signs callbacks with), so only this deployment can point a callback at a connection or
    an asset.
    """
    message = f"apikley-callback-route\n{conn_id}\n{asset_uri}".encode()
    digest = hmac.new(key.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def check_route_token(keys: Sequence[str], conn_id: str, asset_uri: str, token: str | None) -> None:
    """
    Check the token a callback URL carries for its connection and asset.

    :raises CallbackRejected: unless ``token`` is :func:`route_token` of this connection and asset
        under one of ``keys`` (the current key and those being rotated out).
    """
    if not token or not any(
        hmac.compare_digest(route_token(key, conn_id, asset_uri).encode(), token.encode()) for key in keys
    ):
        raise CallbackRejected(
            f"callback URL names connection {conn_id!r} or an asset without a valid token", "route token"
        )


@dataclass(frozen=True)
class CheckedSignature:
    """
    A callback signature found right, fresh and not yet spent.

    It is spent only in the transaction that takes the delivery, recording its event or finding the
    task recorded already (see :func:`~airflow_provider_qwen.api_server.asset_events.record_finished_task`),
    so a delivery that meets a fault or an unfinished task can be sent again.

    :param value: the signature.
    :param forget_before: when spending it, the spent signatures from before this time (Unix
        seconds) can be forgotten: they are stale anyway.
    """

    value: str
    forget_before: float


def timestamp_problem(timestamp: str, max_age: float, now: float) -> tuple[str, str] | None:
    """
    Return why ``timestamp`` cannot date a signature at ``now``, or ``None`` when it is fresh.

    :param max_age: seconds it may lie in the past (or in the future, for clock skew).
    :return: what is wrong (for the log) and the refusal's reason: ``"timestamp"`` or ``"stale"``.
    """
    try:
        sent_at = int(timestamp)
    except ValueError:
        return f"timestamp {timestamp[:40]!r} is not Unix seconds", "timestamp"
    if abs(now - sent_at) > max_age:
        return f"signed {now - sent_at:.0f} s ago", "stale"
    return None


def same_signature(expected: str, given: str) -> bool:
    """Whether ``given`` is the ``expected`` signature, compared in constant time."""
    return hmac.compare_digest(expected.encode(), given.encode())


class SignatureChecker:
    """
    Accept each correctly signed, fresh callback until a delivery with it is taken.

    Spent signatures are remembered (in the metadata database by default, so every api-server
    process and restart shares the memory) until they are stale anyway, so a replay of a taken
    delivery is refused too.

    :param max_age: seconds a timestamp may lie in the past (or in the future, for clock skew).
    :param is_spent: whether a signature was spent by a delivery taken already.
    """

    def __init__(self, max_age: float = DEFAULT_MAX_AGE_SECONDS, is_spent: IsSpent | None = None) -> None:
        self.max_age = max_age
        self._is_spent = is_spent

    def check(self, key: str, task_id: str, timestamp: str | None, signature: str | None) -> CheckedSignature:
        """
        Check Apikley's signature on a callback; return it, to be spent when the delivery is taken.

        :raises CallbackRejected: when a header is missing, the signature is wrong, the timestamp is
            stale or a delivery with the same signature was already taken.
        """
        if not timestamp or not signature:
            raise CallbackRejected("unsigned callback, but the connection has a webhook HMAC key", "unsigned")
        expected = callback_signature(key, task_id, timestamp)
        if not same_signature(expected, signature):
            raise CallbackRejected(f"bad signature for task {task_id}", "signature")
        now = time.time()
        if problem := timestamp_problem(timestamp, self.max_age, now):
            what, reason = problem
            raise CallbackRejected(f"callback for task {task_id} refused: {what}", reason)
        is_spent = self._is_spent or _spent_in_database
        if is_spent(expected):
            raise CallbackRejected(f"replayed callback for task {task_id}", "replayed")
        # A timestamp up to max_age ahead of the clock stays fresh for 2 * max_age from now.
        return CheckedSignature(expected, forget_before=now - 2 * self.max_age)


#: Whether a signature was spent by a delivery taken already.
IsSpent = Callable[[str], bool]


def _spent_in_database(signature: str) -> bool:
    from airflow_provider_qwen.api_server.deliveries import signature_spent

    return signature_spent(signature)
