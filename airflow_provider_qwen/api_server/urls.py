"""
URLs of the provider's app on the api-server: an Apikley task's page, the callback receiver, the create pace.

Tasks and the extra link build them; the app they lead to is :mod:`airflow_provider_qwen.api_server.app`.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from airflow.providers.common.compat.sdk import conf

from airflow_provider_qwen.exceptions import ApikleyConfigurationError

#: Where the provider's app is mounted on the api-server (see :mod:`airflow_provider_qwen.api_server.plugin`).
API_SERVER_PREFIX = "/apikley"
#: Where a task takes a create slot from the pace its connection's edits share, under the prefix
#: (see :mod:`airflow_provider_qwen.api_server.create_pace`).
CREATE_PACE_RESERVE_PATH = "/create-pace/reserve"


def _api_server_url(path: str) -> str:
    return conf.get("api", "base_url", fallback="").rstrip("/") + API_SERVER_PREFIX + path


def task_page_url(apikley_conn_id: str, apikley_task_id: str) -> str:
    """Return the api-server page of an Apikley task, read through ``apikley_conn_id``."""
    conn_id, task_id = quote(apikley_conn_id, safe=""), quote(apikley_task_id, safe="")
    return _api_server_url(f"/connections/{conn_id}/tasks/{task_id}")


def callback_url(asset_uri: str | None = None, apikley_conn_id: str | None = None) -> str:
    """
    Where Apikley should send a task's callback: the provider's receiver on this Airflow's api-server.

    Built from ``[api] base_url``, which must be a URL Apikley can reach. With neither argument the
    receiver uses ``apikley_default`` and updates ``apikley://<model>``, and this reads nothing. A
    URL that names a connection or an asset carries a token signed with the first of that
    connection's ``route_keys``, a key only this deployment holds (Apikley has the webhook key, not
    this one), so nobody else can make such a URL; building it reads the connection, so call it at
    run time (in a task or a template), not at the top level of a DAG file.

    :param asset_uri: the Asset the receiver updates; by default ``apikley://<model>``.
    :param apikley_conn_id: the connection the receiver checks signatures and re-reads the task with;
        by default ``apikley_default``.
    :raises ApikleyConfigurationError: when a connection or asset is named and the connection has no
        ``route_keys``, or no ``webhook_secret`` to check Apikley's signature with, or the receiver
        would refuse the connection (not shaped like a connection id, or not listed in
        ``[apikley] callback_connections`` when that is set).
    """
    if asset_uri is None and apikley_conn_id is None:
        return _api_server_url("/callback")
    from airflow_provider_qwen.api_server.refusals import connection_refusal
    from airflow_provider_qwen.api_server.signing import route_token
    from airflow_provider_qwen.hooks.apikley import ApikleyHook

    conn_id = apikley_conn_id or ApikleyHook.default_conn_name
    if refusal := connection_refusal(conn_id):
        raise ApikleyConfigurationError(
            f"callback_url(asset_uri={asset_uri!r}, apikley_conn_id={conn_id!r}): the receiver would refuse its "
            f"callbacks: {refusal}"
        )
    settings = ApikleyHook(conn_id).settings
    missing = [
        name
        for name, value in (("route_keys", settings.route_keys), ("webhook_secret", settings.webhook_secret))
        if not value
    ]
    if missing:
        raise ApikleyConfigurationError(
            f"callback_url(asset_uri={asset_uri!r}, apikley_conn_id={conn_id!r}): naming a connection or an "
            f"asset needs the {' and '.join(missing)} extra on connection {conn_id!r} (route_keys sign the URL, "
            "webhook_secret checks Apikley's signature)"
        )
    token = route_token(settings.route_keys[0], conn_id, asset_uri or "")
    query = {"conn_id": conn_id, "asset": asset_uri or "", "token": token}
    return _api_server_url("/callback") + "?" + urlencode({name: value for name, value in query.items() if value})
