"""aiohttp sessions shared by every hook of one connection in one event loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl


@dataclass
class _Shared:
    session: aiohttp.ClientSession
    users: int = 0


class SharedSessions:
    """
    Lend out one :class:`aiohttp.ClientSession` per (event loop, connection id), counting borrowers.

    A triggerer runs thousands of triggers in one event loop; a session (with its connection pool)
    for each would cost memory and sockets for nothing, since they all call the same host. The
    session holds no credentials: headers and timeouts go with each request, so a borrower that read
    a newer version of the connection sends its own key. The last borrower to give a session back
    closes it.
    """

    def __init__(self) -> None:
        self._shared: dict[tuple[asyncio.AbstractEventLoop, str], _Shared] = {}

    async def acquire(self, conn_id: str) -> aiohttp.ClientSession:
        """Borrow the running loop's session for ``conn_id``, opening one if none is open."""
        key = (asyncio.get_running_loop(), conn_id)
        shared = self._shared.get(key)
        if shared is None or shared.session.closed:
            shared = self._shared[key] = _Shared(aiohttp.ClientSession())
        shared.users += 1
        return shared.session

    async def release(self, conn_id: str) -> None:
        """Give the session back; the last borrower closes it."""
        key = (asyncio.get_running_loop(), conn_id)
        shared = self._shared.get(key)
        if shared is None:
            return
        shared.users -= 1
        if shared.users <= 0:
            del self._shared[key]
            await shared.session.close()

    def borrowers(self, conn_id: str) -> int:
        """How many hooks of the running loop hold the session for ``conn_id`` (0 when none is open)."""
        shared = self._shared.get((asyncio.get_running_loop(), conn_id))
        return shared.users if shared else 0


def proxy_options(proxy: str | None) -> dict[str, Any]:
    """
    Return aiohttp's ``proxy`` and ``proxy_auth`` request arguments for a proxy URL (``None``: no proxy).

    The credentials go apart, as ``proxy_auth``: aiohttp quotes the proxy URL it was given in its
    errors (a ``407`` among them), so the URL it gets holds none.
    """
    if not proxy:
        return {"proxy": None}
    url = yarl.URL(proxy)
    return {"proxy": url.with_user(None), "proxy_auth": aiohttp.BasicAuth.from_url(url)}


#: The process's shared sessions; :class:`~airflow_provider_qwen.hooks.apikley.ApikleyHook` borrows from it.
shared_sessions = SharedSessions()
