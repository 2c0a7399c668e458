"""
Where result images may be fetched from, and fetching them.

A result URL comes from Apikley's answer, so it is checked like any input from outside, at every
redirect hop: http(s) only; never a link-local or cloud-metadata address; loopback and private
addresses only when the connection's own base URL is on such an address (a local emulator) or
the connection's ``private_result_hosts`` extra lists the host. Nothing of the connection goes
with the request: no API key, no extra, no ``~/.netrc`` entry, no proxy from the environment.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests

from airflow_provider_qwen.exceptions import ApikleyConnectionError, ApikleyError, ApikleyURLRefusedError
from airflow_provider_qwen.hooks.deadline import DeadlineAdapter
from airflow_provider_qwen.models import is_http_url

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
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    # ::ffff:169.254.169.254 is the metadata service too
    return [getattr(a, "ipv4_mapped", None) or a for a in addresses]


def _is_private(address: IPAddress) -> bool:
    return not address.is_global


@dataclass(frozen=True)
class ResultHostPolicy:
    """
    Which hosts result URLs may point to.

    :param allow_private: loopback and private addresses are allowed (the API itself is on one).
    :param private_hosts: host names or IP networks on private ranges that are allowed anyway.
    """

    allow_private: bool = False
    private_hosts: tuple[str, ...] = ()

    @classmethod
    def for_api(cls, base_url: str, private_hosts: tuple[str, ...] = ()) -> ResultHostPolicy:
        """The policy of a connection whose API is at ``base_url``."""
        parts = urlsplit(base_url)
        try:
            addresses = resolve(parts.hostname or "", parts.port or 443)
        except ApikleyError:
            addresses = []
        return cls(allow_private=any(_is_private(a) for a in addresses), private_hosts=private_hosts)

    def check(self, url: str) -> str:
        """
        :return: ``url``, when it may be fetched.
        :raises ApikleyURLRefusedError: naming the URL and the rule it breaks.
        """
        if not is_http_url(url):
            raise ApikleyURLRefusedError(f"Result URL {url!r}: must be an http:// or https:// URL")
        parts = urlsplit(url)
        host = parts.hostname.lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        for address in resolve(host, port):
            if address.is_link_local or address.is_unspecified or address.is_multicast or address in METADATA_ADDRESSES:
                raise ApikleyURLRefusedError(
                    f"Result URL {url!r}: {host} is {address}, a link-local, metadata or unroutable address"
                )
            if _is_private(address) and not (self.allow_private or self._listed(host, address)):
                raise ApikleyURLRefusedError(
                    f"Result URL {url!r}: {host} is {address}, a loopback or private address; list it in the "
                    "connection's private_result_hosts extra to allow it"
                )
        return url

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


def download_session(user_agent: str) -> requests.Session:
    """A session for result URLs: nothing from the connection or the environment goes with it."""
    session = requests.Session()
    session.trust_env = False  # no ~/.netrc credentials, no proxy or CA bundle from the environment
    session.headers.update({"User-Agent": user_agent})
    adapter = DeadlineAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@contextmanager
def open_result(
    session: requests.Session, url: str, policy: ResultHostPolicy, timeout: float
) -> Iterator[requests.Response]:
    """
    ``GET`` a result URL, following at most :data:`MAX_REDIRECTS` redirects, each hop checked.

    :raises ApikleyURLRefusedError: when a hop breaks the policy, or there are too many.
    """
    for _ in range(MAX_REDIRECTS + 1):
        policy.check(url)
        response = session.get(url, stream=True, timeout=timeout, allow_redirects=False)
        location = response.headers.get("Location")
        if response.status_code not in REDIRECT_STATUSES or not location:
            with response:
                yield response
            return
        response.close()
        url = urljoin(url, location)
    raise ApikleyURLRefusedError(f"Result URL redirects more than {MAX_REDIRECTS} times; last hop {url!r}")
