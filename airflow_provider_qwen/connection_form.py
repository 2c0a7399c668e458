"""
The ``apikley`` connection type: its fields, how Airflow's connection form shows them, their defaults.

One list (:data:`STANDARD_FIELDS`, :data:`EXTRA_FIELDS`) makes the form, the extras the hook reads
and the documentation's reference table, so the three cannot disagree.

Kept free of Airflow imports: the providers manager reads it through :func:`get_provider_info`
without importing the hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CONN_TYPE = "apikley"
DEFAULT_BASE_URL = "https://api.apikley.ru"
DEFAULT_UPLOAD_BASE_URL = "https://api.apikley.ru/file-upload"
DEFAULT_TIMEOUT_SECONDS = 60.0
#: Apikley's create limit per account: this many tasks created in any window of this many seconds.
DEFAULT_CREATES_PER_WINDOW, DEFAULT_WINDOW_SECONDS = 20, 10.0


@dataclass(frozen=True)
class ConnectionField:
    """
    One field of the ``apikley`` connection, as the UI's form shows it and the reference documents it.

    :param name: Airflow's field (``password``, ``host``, ``port``), or the extra's key.
    :param label: the form's label.
    :param description: the form's help text, and the reference's.
    :param default: what applies when the field is empty, as the reference shows it.
    :param schema: for an extra, the JSON schema of its form widget; ``None`` for Airflow's own fields.
    """

    name: str
    label: str
    description: str
    default: str
    schema: dict[str, Any] | None = None


#: Airflow's own fields the connection uses (``login`` and ``schema`` are hidden).
STANDARD_FIELDS = (
    ConnectionField("password", "API key", "Your Apikley API key, sent as a bearer token.", "required"),
    ConnectionField(
        "host",
        "Base URL",
        "The API's base URL; a host without a scheme gets https://.",
        f"`{DEFAULT_BASE_URL}`",
    ),
    ConnectionField("port", "Port", "Added to the base URL when set.", "none"),
)

#: The extras :class:`~airflow_provider_qwen.hooks.apikley.ApikleyHook` reads, and nothing else.
EXTRA_FIELDS = (
    ConnectionField(
        "timeout",
        "Request timeout (seconds)",
        "Seconds one HTTP call to Apikley may take in all, the answer's last byte included.",
        f"`{DEFAULT_TIMEOUT_SECONDS:g}`",
        {"type": ["number", "null"], "minimum": 1, "default": DEFAULT_TIMEOUT_SECONDS},
    ),
    ConnectionField(
        "upload_base_url",
        "Upload base URL",
        "Base URL of Apikley's file upload API, when it is not the Base URL followed by /file-upload.",
        "the Base URL followed by `/file-upload`",
        # no default: the UI would save it, and a connection to an emulator would upload to Apikley
        {"type": ["string", "null"], "format": "url"},
    ),
    ConnectionField(
        "webhook_secret",
        "Webhook HMAC key",
        "The key Apikley signs task callbacks with. Callbacks are refused without it, unless the "
        "deployment sets [apikley] allow_unsigned_callbacks.",
        "unset: callbacks refused",
        {"type": ["string", "null"], "format": "password"},
    ),
    ConnectionField(
        "route_keys",
        "Callback route keys",
        "This deployment's own keys (comma-separated, newest first, 32+ characters each; Apikley never "
        "sees them) for callback URLs that name a connection or an asset: the first signs, all are "
        "accepted. Rotate by putting a new key first; drop the old one once no task holds its URLs.",
        "unset",
        {"type": ["string", "null"], "format": "password"},
    ),
    ConnectionField(
        "proxies",
        "Proxies",
        "Proxies for the API and result downloads, as JSON mapping a scheme to a proxy URL, e.g. "
        '{"https": "http://proxy:3128"}.',
        "none: API calls follow the environment's proxy variables, result downloads never do",
        {"type": ["string", "null"]},
    ),
    ConnectionField(
        "verify",
        "TLS verification",
        "true, false, or the path of a CA bundle to verify Apikley's certificate with.",
        "`true`",
        {"type": ["string", "null"]},
    ),
    ConnectionField(
        "private_result_hosts",
        "Private result hosts",
        "Comma-separated host names or IP networks on loopback or private ranges that result URLs may "
        "point to. Not needed when the Base URL itself is such a host.",
        "none",
        {"type": ["string", "null"]},
    ),
    ConnectionField(
        "creates_per_window",
        "Creates per window",
        "Tasks the account may create in any window of window_seconds (Apikley's limit). Edits through "
        "this connection space their creates to fit it, together across the deployment.",
        f"`{DEFAULT_CREATES_PER_WINDOW}`",
        {"type": ["integer", "null"], "minimum": 1, "default": DEFAULT_CREATES_PER_WINDOW},
    ),
    ConnectionField(
        "window_seconds",
        "Create window (seconds)",
        "The length of the window creates_per_window counts in.",
        f"`{DEFAULT_WINDOW_SECONDS:g}`",
        {"type": ["number", "null"], "exclusiveMinimum": 0, "default": DEFAULT_WINDOW_SECONDS},
    ),
    ConnectionField(
        "shared_create_pace",
        "Share the create pace",
        "When true, every edit through this connection takes a create slot from the api-server's "
        "pace before it creates, so mapped edits on many workers stay under creates_per_window; when "
        "false, each edit creates at once and backs off when Apikley answers 429.",
        "`true`",
        {"type": ["boolean", "null"], "default": True},
    ),
    ConnectionField(
        "strict_extras",
        "Refuse unknown extras",
        "When true, an extra the provider does not read (a mistyped timeout, say) fails the task before "
        "any request; when false, it is ignored with one warning per process that suggests the closest name.",
        "`false`",
        {"type": ["boolean", "null"], "default": False},
    ),
)

#: The extras' widgets in Airflow's connection form (the provider info's ``conn-fields``).
CONN_FIELDS: dict[str, dict[str, Any]] = {
    field.name: {"label": field.label, "description": field.description, "schema": field.schema}
    for field in EXTRA_FIELDS
}


def connection_reference_markdown() -> str:
    """Return the connection's fields and extras as the Markdown table the documentation shows."""
    rows = ["| field | in the form | what it is | default |", "|---|---|---|---|"]
    for field in (*STANDARD_FIELDS, *EXTRA_FIELDS):
        name = f"extra `{field.name}`" if field.schema is not None else field.name
        rows.append(f"| {name} | {field.label} | {field.description} | {field.default} |")
    return "\n".join(rows) + "\n"


UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["login", "schema"],
    "relabeling": {field.name: field.label for field in STANDARD_FIELDS if field.name != "port"},
    "placeholders": {"host": DEFAULT_BASE_URL},
}

CONNECTION_TYPE: dict = {
    "hook-class-name": "airflow_provider_qwen.hooks.apikley.ApikleyHook",
    "hook-name": "Apikley",
    "connection-type": CONN_TYPE,
    "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
    "conn-fields": CONN_FIELDS,
}
