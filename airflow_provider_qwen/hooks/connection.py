"""
Reading an ``apikley`` connection into the settings the clients use.

Shared by the blocking and the async client and by the api-server, so all of them read a
connection the same way: only connections of type ``apikley``, and only the extras listed in
:data:`KNOWN_EXTRAS`. Nothing else a connection holds is ever sent anywhere.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import threading
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import requests
from requests.auth import AuthBase

from airflow.providers.common.compat.sdk import mask_secret

from airflow_provider_qwen.connection_form import (
    CONN_TYPE,
    DEFAULT_BASE_URL,
    DEFAULT_CREATES_PER_WINDOW,
    DEFAULT_TIMEOUT_SECONDS,
    DEFAULT_UPLOAD_BASE_URL,
    DEFAULT_WINDOW_SECONDS,
    EXTRA_FIELDS,
)
from airflow_provider_qwen.exceptions import ApikleyConfigurationError
from airflow_provider_qwen.redaction import shown_setting, shown_url, url_passwords, without_credentials
from airflow_provider_qwen.validation import is_http_url

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Connection

log = logging.getLogger(__name__)

#: The connection extras the provider reads; any other extra is ignored (never sent as a header).
KNOWN_EXTRAS = frozenset(field.name for field in EXTRA_FIELDS)


def connection_source(conn_id: str) -> str:
    """
    Where Airflow reads connection ``conn_id`` from, as a user would go to fix it.

    Airflow looks in a configured secrets backend first, then ``AIRFLOW_CONN_<ID>``, then its
    metadata database; the first that has the connection wins.
    """
    variable = f"AIRFLOW_CONN_{conn_id.upper()}"
    fallback = (
        f"environment variable {variable}" if variable in os.environ else "the metadata database (Admin → Connections)"
    )
    backend = secrets_backend_name()
    return f"the secrets backend {backend}, else {fallback}" if backend else fallback


def secrets_backend_name() -> str | None:
    """Return the class name of the secrets backend Airflow's ``[secrets] backend`` configures, if any."""
    from airflow.configuration import conf

    backend = conf.get("secrets", "backend", fallback="")
    return backend.rsplit(".", 1)[-1] if backend else None


#: The most creates per window an extra may say, and the longest window in seconds: a day.
MAX_CREATES_PER_WINDOW, MAX_WINDOW_SECONDS = 1_000_000, 86_400.0

#: The shortest route key accepted: a key signs callback URLs, so it must not be guessable.
MIN_ROUTE_KEY_CHARS = 32

#: Where the upload API lives under the API's base URL, at Apikley (https://api.apikley.ru/file-upload)
#: as in the emulator.
UPLOAD_BASE_PATH = "/file-upload"


class BearerAuth(AuthBase):
    """Adds ``Authorization: Bearer <key>`` to each request; its repr never shows the key."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """Add the key to ``request`` as a bearer token."""
        request.headers["Authorization"] = f"Bearer {self._api_key}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(api_key=***)"


@dataclass(frozen=True, repr=False)
class ApikleySettings:
    """
    What the provider takes from an ``apikley`` connection.

    Every password in its URLs (host, ``upload_base_url``, ``proxies``) is registered with Airflow's
    secrets masker, and its repr shows those URLs without their ``user:password``.

    :param conn_id: the connection's id.
    :param base_url: the API's base URL, from the host (default https://api.apikley.ru).
    :param api_key: the password; never in the repr.
    :param timeout: seconds one request may take in all (extra ``timeout``).
    :param upload_base_url: base URL of the file upload API: the extra ``upload_base_url``, else
        ``base_url`` followed by ``/file-upload`` (see :func:`upload_base_url_from_extra`).
    :param webhook_secret: the key Apikley signs callbacks with (extra ``webhook_secret``); never in the repr.
    :param route_keys: the deployment's own keys for callback URLs that name a connection or an
        asset (extra ``route_keys``: one key, or a list, newest first); Apikley never sees them. The
        first signs new URLs, every one is accepted, so a key is rotated by putting a new one first
        and dropping the old one once no task still holds a URL it signed. Never in the repr.
    :param proxies: ``requests``-style proxies for the API (extra ``proxies``), a proxy's credentials
        in its URL (``http://user:password@proxy:3128``); a proxy written without a scheme gets ``http://``.
    :param verify: TLS verification: ``True``, ``False`` or a CA bundle path (extra ``verify``).
    :param private_result_hosts: host names or IP networks on loopback or private ranges that result
        URLs may point to (extra ``private_result_hosts``); public hosts need no listing.
    :param team: the team that owns the connection under ``[core] multi_team`` (Airflow 3.3+), whose
        consumers a callback delivered through it may start.
    :param creates_per_window: tasks the account may create in any ``window_seconds`` (extra
        ``creates_per_window``; Apikley's limit, 20 by default).
    :param window_seconds: the length of that window (extra ``window_seconds``, 10 by default).
    :param shared_create_pace: whether edits take a create slot from the api-server's shared pace
        before creating (extra ``shared_create_pace``, true by default).
    """

    conn_id: str
    base_url: str
    api_key: str = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    upload_base_url: str = DEFAULT_UPLOAD_BASE_URL
    webhook_secret: str | None = field(default=None, repr=False)
    route_keys: tuple[str, ...] = field(default=(), repr=False)
    proxies: dict[str, str] = field(default_factory=dict)
    verify: bool | str = True
    private_result_hosts: tuple[str, ...] = ()
    team: str | None = None
    creates_per_window: int = DEFAULT_CREATES_PER_WINDOW
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    shared_create_pace: bool = True

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)
        return without_credentials(f"{type(self).__name__}({shown})")

    def client_verify(self) -> bool | str:
        """
        Return :attr:`verify` for a client to call out with: a CA bundle path is checked to exist here.

        Checked when a client is built, not when the connection is read (the api-server reads it and
        never calls out): the TLS library would quote the path, which may be a key pasted there.

        :raises ApikleyConfigurationError: naming the extra, not its text, when no such file or folder exists.
        """
        if isinstance(self.verify, str) and not os.path.exists(self.verify):
            raise ApikleyConfigurationError(
                f"Connection {self.conn_id!r} extra {shown_setting('verify', self.verify)}: "
                "must be true, false or the path of a CA bundle on this machine, and no such file or folder exists"
            )
        return self.verify

    @classmethod
    def from_connection(cls, conn: Connection, extra: dict[str, Any] | None = None) -> ApikleySettings:
        """
        Read ``conn`` (with its extra already parsed, for the async path).

        :raises ApikleyConfigurationError: when the connection is not of type ``apikley``, has no API
            key, or holds an extra that breaks its rule.
        """
        require_apikley_type(conn)
        extra = conn.extra_dejson if extra is None else extra
        if not isinstance(extra, dict):
            raise ApikleyConfigurationError(f"Connection {conn.conn_id!r}: its extra must be a JSON object")
        check_unknown_extras(conn.conn_id, extra)
        secret = extra.get("webhook_secret") or None
        if secret is not None:
            mask_secret(str(secret))
        base_url = base_url_from_connection(conn)
        settings = cls(
            conn_id=conn.conn_id,
            base_url=base_url,
            api_key=api_key_from_connection(conn),
            timeout=timeout_from_extra(extra),
            upload_base_url=upload_base_url_from_extra(conn, extra, base_url),
            webhook_secret=str(secret) if secret is not None else None,
            route_keys=_route_keys_from_extra(conn, extra),
            proxies=_proxies_from_extra(conn, extra),
            verify=_verify_from_extra(conn, extra),
            private_result_hosts=_hosts_from_extra(conn, extra),
            team=getattr(conn, "team_name", None) or None,
            creates_per_window=_creates_per_window_from_extra(conn, extra),
            window_seconds=_window_seconds_from_extra(conn, extra),
            shared_create_pace=_boolean_extra(conn.conn_id, extra, "shared_create_pace", default=True),
        )
        for url in (settings.base_url, settings.upload_base_url, *settings.proxies.values()):
            for password in url_passwords(url):
                mask_secret(password)
        return settings


#: The unknown extras already warned about in this process, per connection: a warning each, not one per hook.
_warned_extras: set[tuple[str, tuple[str, ...]]] = set()
_warned_extras_lock = threading.Lock()


def check_unknown_extras(conn_id: str, extra: dict[str, Any]) -> None:
    """
    Refuse, or warn once about, the extras of connection ``conn_id`` that are not Apikley settings.

    Each unknown extra is named with the closest known one (``timout``: did you mean ``timeout``?).
    Without ``strict_extras`` they are ignored, with one warning per connection and set of unknown
    extras in the process, however many hooks read the connection.

    :raises ApikleyConfigurationError: when the extra ``strict_extras`` is true and an extra is unknown,
        or ``strict_extras`` is neither true nor false.
    """
    strict = _strict_extras_from_extra(conn_id, extra)
    unknown = sorted(set(extra) - KNOWN_EXTRAS)
    if not unknown:
        return
    if strict:
        named = ", ".join(f"{shown_setting(name, extra[name])}{_closest_extra(name)}" for name in unknown)
        raise ApikleyConfigurationError(
            f"Connection {conn_id!r} extra {named}: not an Apikley setting, and strict_extras refuses "
            f"extras the provider does not read (it reads {', '.join(sorted(KNOWN_EXTRAS))})"
        )
    with _warned_extras_lock:
        if (conn_id, tuple(unknown)) in _warned_extras:
            return
        _warned_extras.add((conn_id, tuple(unknown)))
    named = ", ".join(f"{name!r}{_closest_extra(name)}" for name in unknown)
    log.warning("Connection %r: extras %s are not Apikley settings and are ignored", conn_id, named)


def _closest_extra(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), KNOWN_EXTRAS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _strict_extras_from_extra(conn_id: str, extra: dict[str, Any]) -> bool:
    return _boolean_extra(conn_id, extra, "strict_extras", default=False)


def _boolean_extra(conn_id: str, extra: dict[str, Any], name: str, *, default: bool) -> bool:
    value = extra.get(name)
    if value in (None, ""):
        return default
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ApikleyConfigurationError(
            f"Connection {conn_id!r} extra {shown_setting(name, value)}: must be true or false"
        )
    return value


def _creates_per_window_from_extra(conn: Connection, extra: dict[str, Any]) -> int:
    value = extra.get("creates_per_window")
    if value in (None, ""):
        return DEFAULT_CREATES_PER_WINDOW
    creates = int(value) if isinstance(value, int | str) and str(value).strip().isdigit() else 0
    if isinstance(value, bool) or not 1 <= creates <= MAX_CREATES_PER_WINDOW:
        raise ApikleyConfigurationError(
            f"Connection {conn.conn_id!r} extra {shown_setting('creates_per_window', value)}: "
            f"must be a whole number from 1 to {MAX_CREATES_PER_WINDOW}"
        )
    return creates


def _window_seconds_from_extra(conn: Connection, extra: dict[str, Any]) -> float:
    value = extra.get("window_seconds")
    if value in (None, ""):
        return DEFAULT_WINDOW_SECONDS
    try:
        seconds = float(value) if not isinstance(value, bool) else 0.0
    except (TypeError, ValueError):
        seconds = 0.0
    if not 0 < seconds <= MAX_WINDOW_SECONDS:  # NaN fails too
        raise ApikleyConfigurationError(
            f"Connection {conn.conn_id!r} extra {shown_setting('window_seconds', value)}: "
            f"must be a number of seconds above 0, at most {MAX_WINDOW_SECONDS:g}"
        )
    return seconds


def require_apikley_type(conn: Connection) -> None:
    """
    Refuse a connection of another type.

    :raises ApikleyConfigurationError: unless ``conn`` is of type ``apikley``: its secret is never
        used for, nor sent to, anything else.
    """
    if conn.conn_type != CONN_TYPE:
        raise ApikleyConfigurationError(
            f"Connection {conn.conn_id!r} is of type {conn.conn_type!r}; "
            f"Apikley needs a connection of type {CONN_TYPE!r}"
        )


def base_url_from_connection(conn: Connection) -> str:
    """
    Return the API's base URL from the connection's host; an empty host means Apikley's public API.

    A host without a scheme gets ``https://``.

    :raises ApikleyConfigurationError: when the host is not an http(s) URL.
    """
    host = (conn.host or "").strip() or DEFAULT_BASE_URL
    if "://" not in host:
        host = f"{conn.schema or 'https'}://{host}"
    if conn.port:
        host = f"{host}:{conn.port}"
    if not is_http_url(host):
        raise ApikleyConfigurationError(
            f"Connection {conn.conn_id!r}: host {shown_url(host)} is not an http(s) base URL such as {DEFAULT_BASE_URL}"
        )
    return host.rstrip("/")


def upload_base_url_from_extra(conn: Connection, extra: dict[str, Any], base_url: str) -> str:
    """
    Return the upload API's base URL: the extra ``upload_base_url`` when set, else ``base_url`` + ``/file-upload``.

    Apikley serves its upload API under its API's address (https://api.apikley.ru/file-upload), and
    so does the emulator, so a connection whose host names an emulator or another Apikley-compatible
    server uploads there too, never to the public service behind the user's back. A connection with
    neither a host nor the extra uploads to https://api.apikley.ru/file-upload. A service that keeps
    its upload API elsewhere needs the extra.

    :param base_url: the API's base URL, from :func:`base_url_from_connection`.
    :raises ApikleyConfigurationError: when the extra is not an http(s) URL.
    """
    return _http_url_extra(conn, extra, "upload_base_url", base_url + UPLOAD_BASE_PATH)


def api_key_from_connection(conn: Connection) -> str:
    """
    Return the API key from the connection's password, registered with Airflow's secrets masker.

    :raises ApikleyConfigurationError: when the password is empty.
    """
    api_key = (conn.password or "").strip()
    if not api_key:
        raise ApikleyConfigurationError(
            f"Connection {conn.conn_id!r} has no API key: put your Apikley API key in its password"
        )
    mask_secret(api_key)
    return api_key


def timeout_from_extra(extra: dict[str, Any]) -> float:
    """Return the per-call time limit in seconds from the connection's extra, or the default."""
    value = extra.get("timeout")
    if value in (None, ""):
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise ApikleyConfigurationError(
            f"Connection extra {shown_setting('timeout', value)}: must be a number of seconds > 0"
        )
    return seconds


def _http_url_extra(conn: Connection, extra: dict[str, Any], name: str, default: str) -> str:
    value = extra.get(name) or default
    url = str(value).rstrip("/")
    if not is_http_url(url):
        # a URL is quoted without its credentials; anything else may be a key pasted here
        shown = f"{name}={shown_url(url)}" if "://" in url else shown_setting(name, value)
        raise ApikleyConfigurationError(f"Connection {conn.conn_id!r} extra {shown}: must be an http(s) URL")
    return url


def _proxies_from_extra(conn: Connection, extra: dict[str, Any]) -> dict[str, str]:
    proxies = extra.get("proxies") or {}
    if isinstance(proxies, str):  # as the connection form saves it
        with contextlib.suppress(ValueError):  # not JSON: refused below, as any other non-mapping
            proxies = json.loads(proxies)
    if not isinstance(proxies, dict) or not all(isinstance(v, str) for v in proxies.values()):
        raise ApikleyConfigurationError(
            f"Connection {conn.conn_id!r} extra proxies: must map a scheme to a proxy URL, "
            'e.g. {"https": "http://proxy:3128"}'
        )
    # requests reads a proxy without a scheme as http://; aiohttp needs it written
    return {scheme: url if "://" in url or not url else f"http://{url}" for scheme, url in proxies.items()}


def _verify_from_extra(conn: Connection, extra: dict[str, Any]) -> bool | str:
    verify = extra.get("verify")
    if verify in (None, ""):  # unset, or left empty in the connection form
        return True
    if isinstance(verify, str) and verify.lower() in ("true", "false"):
        return verify.lower() == "true"
    if not isinstance(verify, (bool, str)):
        raise ApikleyConfigurationError(
            f"Connection {conn.conn_id!r} extra {shown_setting('verify', verify)}: "
            "must be true, false or a CA bundle path"
        )
    return verify


def _hosts_from_extra(conn: Connection, extra: dict[str, Any]) -> tuple[str, ...]:
    hosts = extra.get("private_result_hosts") or []
    if isinstance(hosts, str):
        hosts = [host.strip() for host in hosts.split(",") if host.strip()]
    if not isinstance(hosts, list) or not all(isinstance(host, str) and host for host in hosts):
        raise ApikleyConfigurationError(
            f"Connection {conn.conn_id!r} extra private_result_hosts: must be a list of host names or IP networks"
        )
    return tuple(host.lower() for host in hosts)


def _route_keys_from_extra(conn: Connection, extra: dict[str, Any]) -> tuple[str, ...]:
    keys = extra.get("route_keys") or []
    if isinstance(keys, str):
        keys = [key.strip() for key in keys.split(",") if key.strip()]
    if not isinstance(keys, list) or not all(isinstance(key, str) and len(key) >= MIN_ROUTE_KEY_CHARS for key in keys):
        raise ApikleyConfigurationError(
            f"Connection {conn.conn_id!r} extra route_keys: must be a key, or a list of keys newest first, "
            f"each of at least {MIN_ROUTE_KEY_CHARS} characters"
        )
    for key in keys:
        mask_secret(key)
    return tuple(keys)
