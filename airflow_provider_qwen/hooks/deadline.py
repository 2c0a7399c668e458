"""
Wall-clock limits for blocking HTTP calls.

``requests`` bounds each socket read, not a whole answer: a server that sends one byte a second
never trips its timeout. A blocking call made inside :func:`wall_clock_limit`, through a session
that mounts :class:`DeadlineAdapter`, has its socket shut down when the limit passes, wherever the
call is blocked (status line, headers or body), and :attr:`CallDeadline.expired` says so. The
async client needs none of this: aiohttp's total timeout is already a wall-clock limit.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import ProxyManager
from urllib3.response import HTTPResponse

from airflow.providers.http.hooks.http import TCPKeepAliveAdapter


class CallDeadline:
    """
    The moment one call must be over by; shuts down the socket it watches at that moment.

    :param seconds: how long the call may take in all.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires_at = time.monotonic() + seconds
        self.expired = False
        self._timer: threading.Timer | None = None

    def watch(self, sock: socket.socket | None) -> None:
        """Shut ``sock`` down if the call is still running when the deadline passes."""
        self.cancel()
        if sock is None:
            return
        self._timer = threading.Timer(max(0.0, self.expires_at - time.monotonic()), self._expire, (sock,))
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        """Stop watching: the call is over."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, sock: socket.socket) -> None:
        self.expired = True
        with contextlib.suppress(OSError):  # already closed: nothing left to wake
            sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read, which then fails or ends


_current: ContextVar[CallDeadline | None] = ContextVar("apikley_call_deadline", default=None)


@contextmanager
def wall_clock_limit(seconds: float) -> Iterator[CallDeadline]:
    """Give the blocking calls made inside, in this thread, ``seconds`` in all."""
    deadline = CallDeadline(seconds)
    token = _current.set(deadline)
    try:
        yield deadline
    finally:
        _current.reset(token)
        deadline.cancel()


class _Watched(HTTPConnection):
    def getresponse(self) -> HTTPResponse:  # type: ignore[override]  # as urllib3 overrides http.client
        deadline = _current.get()
        if deadline is not None:
            deadline.watch(self.sock)
        return super().getresponse()


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool}


class DeadlineAdapter(TCPKeepAliveAdapter):
    """A keep-alive adapter whose connections honour :func:`wall_clock_limit`."""

    def __init__(self) -> None:
        super().__init__(idle=120, count=20, interval=30)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Pool direct connections in pools whose reads honour the wall-clock limit."""
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> ProxyManager:
        """Pool connections through ``proxy`` the same way."""
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager
