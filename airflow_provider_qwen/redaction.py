"""
What of a user's settings text that leaves the process may quote: errors, events, logs, reprs.

Such text is printed as is (``apikley credits``), stored (trigger events, XCom, a batch's manifest)
or logged under keys Airflow's masker does not know, so it must hold no secret of its own:

- a URL is quoted without its ``user:password``, which becomes ``***``;
- a setting's value is quoted only when it is a number (a number out of range is no secret); any
  other value is named with its kind, never shown, for it may be a key pasted into the wrong field.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

#: What stands in for a URL's ``user:password``.
HIDDEN = "***"

#: A URL's ``scheme://user:password@``: the credentials run to the last ``@`` before a space or a
#: quote, so a password holding ``@``, ``/``, ``?`` or ``#`` is hidden whole (a URL with an ``@``
#: further on loses its host from view too: more hidden, never less).
_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s'\"<>]*)@")


def without_credentials(text: str) -> str:
    """Return ``text`` with the ``user:password`` of every URL in it replaced by ``***``."""
    return _CREDENTIALS.sub(lambda match: f"{match['scheme']}{HIDDEN}@", text)


def shown_url(value: object) -> str:
    """Return ``value`` as an error quotes a URL: its repr, without credentials."""
    return without_credentials(repr(value))


def url_passwords(url: str) -> set[str]:
    """
    Return the password of ``url``'s ``user:password``, as written and decoded; empty when it has none.

    These are what to register with Airflow's secrets masker: the client sends the decoded one.
    """
    url = url.strip()
    match = _CREDENTIALS.match(url if "://" in url else f"http://{url}")  # a proxy may be written without one
    password = match["userinfo"].partition(":")[2] if match else ""
    return {password, unquote(password)} - {""}


def shown_setting(name: str, value: object) -> str:
    """
    Return ``name=value`` for a setting whose value is a number, else ``name`` and the kind of value.

    Used wherever an error quotes a configuration value: a number is shown so the user sees what
    was read, anything else is not, for it may be a secret typed into the wrong field.
    """
    if value is None or isinstance(value, bool | int | float) or (isinstance(value, str) and _is_number(value)):
        return f"{name}={value!r}"
    kind = "a text" if isinstance(value, str) else f"a {type(value).__name__}"
    return f"{name} ({kind}, not shown)"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
