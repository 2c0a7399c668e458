"""Reading a file by URL: from the emulator's own store, or over HTTP from a host it may fetch from."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiohttp

from airflow_provider_qwen.emulator.imaging import MAX_IMAGE_BYTES
from airflow_provider_qwen.emulator.store import FileStore

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
FETCH_TIMEOUT_SECONDS = 30.0


class FetchProblem(ValueError):
    """The URL cannot be read: not allowed, unreachable, missing, expired or too large."""


@dataclass(frozen=True)
class Origin:
    """How clients reach this emulator: the host name they used and the port it listens on."""

    hostname: str
    port: int

    def owns(self, url: str) -> bool:
        """Whether ``url`` points at this emulator (also under another loopback name)."""
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return False
        return port == self.port and (parts.hostname or "") in LOOPBACK_NAMES | {self.hostname}


def stored_path(url: str) -> str:
    """Return the store key of one of the emulator's own URLs."""
    return unquote(urlsplit(url).path).lstrip("/")


def host_allowed(url: str, allowed_hosts: Iterable[str]) -> bool:
    """Whether ``url``'s host is listed, as ``name`` (any port) or ``name:port``."""
    parts = urlsplit(url)
    allowed = set(allowed_hosts)
    return parts.hostname in allowed or parts.netloc in allowed


async def read_url(url: str, origin: Origin, files: FileStore, allowed_hosts: Iterable[str]) -> tuple[bytes, str]:
    """
    Return the content at ``url`` and its content type, at most 10 MB.

    :raises FetchProblem: with a message fit for a ``failMsg`` or an upload's ``msg``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchProblem(f"{url!r} is not an http(s) URL")
    if origin.owns(url):
        stored = files.get(stored_path(url))
        if stored is None:
            raise FetchProblem(f"{url} does not exist or has expired")
        return stored.content, stored.mime_type
    if not host_allowed(url, allowed_hosts):
        raise FetchProblem(f"host {parts.hostname!r} is not one the emulator may fetch from (see allowed_image_hosts)")
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)) as session,
            session.get(url, allow_redirects=False) as response,
        ):
            if response.status != 200:
                raise FetchProblem(f"{url} answered HTTP {response.status}")
            if (response.content_length or 0) > MAX_IMAGE_BYTES:
                raise FetchProblem(f"{url} is {response.content_length} bytes, over the 10 MB limit")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > MAX_IMAGE_BYTES:
                    raise FetchProblem(f"{url} is over the 10 MB limit")
                chunks.append(chunk)
            content_type = response.headers.get("Content-Type", "application/octet-stream")
    except (aiohttp.ClientError, TimeoutError) as err:
        raise FetchProblem(f"{url} could not be fetched ({type(err).__name__})") from None
    return b"".join(chunks), content_type
