"""
Where result images may be fetched from, and fetching them.

A result URL comes from Apikley's answer, so it is checked like any input from outside, at every
redirect hop: http(s) only; never a link-local or cloud-metadata address; a loopback or private
address only when it is the address the connection's own base URL is on (a local emulator serves
its results itself) or the connection's ``private_result_hosts`` extra lists the host or its
network. Each hop connects to the address its check allowed, never to a second DNS answer. Of the
connection only its ``proxies`` and ``verify`` go with the request: no API key, no other extra,
no ``~/.netrc`` entry, nothing from the environment.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
from requests.utils import select_proxy
from urllib3.connectionpool import HTTPConnectionPool

from airflow_provider_qwen.exceptions import ApikleyConnectionError, ApikleyError, ApikleyURLRefusedError
from airflow_provider_qwen.hooks.deadline import DeadlineAdapter
from airflow_provider_qwen.redaction import shown_url
from airflow_provider_qwen.validation import is_http_url

#: Redirects followed from a result URL before giving up.
MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Cloud instance-metadata services outside the link-local range (AWS IPv6, Alibaba).
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200"))

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` stands for (the host itself when it is an IP literal)."""
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as err:
            message = f"Result host {host!r} does not resolve: {err}"
            raise ApikleyConnectionError(message, request_not_sent=True) from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    # ::ffff:169.254.169.254 is the metadata service too
    return [getattr(a, "ipv4_mapped", None) or a for a in addresses]


def _is_private(address: IPAddress) -> bool:
    return not address.is_global


@dataclass(frozen=True)
class ResultHostPolicy:
    """
    Which hosts result URLs may point to.

    :param api_addresses: the private (loopback, private-range) addresses the API itself is on: an
        API on such an address (a local emulator) may serve results from that same address, and only it.
    :param private_hosts: host names or IP networks on private ranges that are allowed anyway.
    """

    api_addresses: frozenset[IPAddress] = frozenset()
    private_hosts: tuple[str, ...] = ()

    @classmethod
    def for_api(cls, base_url: str, private_hosts: tuple[str, ...] = ()) -> ResultHostPolicy:
        """Return the policy of a connection whose API is at ``base_url``."""
        parts = urlsplit(base_url)
        try:
            addresses = resolve(parts.hostname or "", parts.port or 443)
        except ApikleyError:
            addresses = []
        return cls(api_addresses=frozenset(a for a in addresses if _is_private(a)), private_hosts=private_hosts)

    def check(self, url: str) -> list[IPAddress]:
        """
        Check that ``url`` may be fetched.

        :return: the addresses ``url``'s host stands for, when it may be fetched: connect to one of these.
        :raises ApikleyURLRefusedError: naming the URL and the rule it breaks.
        """
        if not is_http_url(url):
            raise ApikleyURLRefusedError(f"Result URL {shown_url(url)}: must be an http:// or https:// URL")
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = resolve(host, port)
        for address in addresses:
            if address.is_link_local or address.is_unspecified or address.is_multicast or address in METADATA_ADDRESSES:
                raise ApikleyURLRefusedError(
                    f"Result URL {shown_url(url)}: {host} is {address}, a link-local, metadata or unroutable address"
                )
            if _is_private(address) and not (address in self.api_addresses or self._listed(host, address)):
                raise ApikleyURLRefusedError(
                    f"Result URL {shown_url(url)}: {host} is {address}, a loopback or private address other than the "
                    "API's own; list it in the connection's private_result_hosts extra to allow it"
                )
        return addresses

    def _listed(self, host: str, address: IPAddress) -> bool:
        for entry in self.private_hosts:
            if entry == host:
                return True
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        return False


class PinnedAddressAdapter(DeadlineAdapter):
    """
    An adapter that connects to the address a host was checked at, instead of resolving it again.

    A second DNS lookup could answer otherwise (DNS rebinding) and reach an address that was never
    checked. Inside :meth:`pinned`, requests to that host go to the address given, with the host's
    name kept for the ``Host`` header, TLS's SNI and the certificate check. Requests through a proxy
    are left alone: the proxy connects, to what it was asked for.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pins = threading.local()

    @contextmanager
    def pinned(self, host: str, address: IPAddress) -> Iterator[None]:
        """Within the block, connect to ``address`` for ``host``."""
        self._pins.pin = (host, address)
        try:
            yield
        finally:
            self._pins.pin = None

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: bool | str | None,
        proxies: dict[str, str] | None = None,
        cert: str | tuple[str, str] | None = None,
    ) -> HTTPConnectionPool:
        """Connect to the pinned address, if any, still checking TLS against the URL's host name."""
        pin = getattr(self._pins, "pin", None)
        url = str(request.url)  # a prepared request's URL is always set
        parts = urlsplit(url)
        if pin is None or pin[0] != parts.hostname or select_proxy(url, proxies):
            return super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
        host, address = pin
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        host_params["host"] = str(address)
        if parts.scheme == "https":
            pool_kwargs.update(server_hostname=host, assert_hostname=host)
        request.headers["Host"] = parts.netloc.rsplit("@", 1)[-1]
        return self.poolmanager.connection_from_host(**host_params, pool_kwargs=pool_kwargs)


def download_session(
    user_agent: str, proxies: dict[str, str] | None = None, verify: bool | str = True
) -> requests.Session:
    """
    Return a session for result URLs.

    It has the connection's ``proxies`` and ``verify``, and nothing else of the connection or the
    environment (no key, no ``~/.netrc``, no proxy or CA bundle from variables).
    """
    session = requests.Session()
    session.trust_env = False
    session.proxies.update(proxies or {})
    session.verify = verify
    session.headers.update({"User-Agent": user_agent})
    adapter = PinnedAddressAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@contextmanager
def open_result(
    session: requests.Session,
    url: str,
    policy: ResultHostPolicy,
    timeout: float,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> Iterator[requests.Response]:
    """
    ``GET`` a result URL, following at most :data:`MAX_REDIRECTS` redirects, each hop checked.

    Without a proxy each hop connects to an address its check allowed; through the connection's
    proxy, the check applies to the URL the proxy is asked to fetch.

    :param method: ``HEAD`` to ask only whether the URL answers (see :mod:`~.preflight`).
    :param headers: sent with each hop (a ``Range``, say).
    :raises ApikleyURLRefusedError: when a hop breaks the policy, or there are too many.
    """
    for _ in range(MAX_REDIRECTS + 1):
        (address, *_) = policy.check(url)
        adapter = session.get_adapter(url)
        pin = (
            adapter.pinned(urlsplit(url).hostname or "", address) if isinstance(adapter, PinnedAddressAdapter) else None
        )
        with pin or nullcontext():
            response = session.request(
                method, url, headers=headers, stream=True, timeout=timeout, allow_redirects=False
            )
        location = response.headers.get("Location")
        if response.status_code not in REDIRECT_STATUSES or not location:
            with response:
                yield response
            return
        response.close()
        url = urljoin(url, location)
    raise ApikleyURLRefusedError(f"Result URL redirects more than {MAX_REDIRECTS} times; last hop {shown_url(url)}")
