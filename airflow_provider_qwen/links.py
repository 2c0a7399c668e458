"""URLs of the provider's app on the api-server: the "Apikley task" extra link, and the callback URL."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom, conf

from airflow_provider_qwen import _compat as compat
from airflow_provider_qwen.exceptions import ApikleyConfigurationError

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.providers.common.compat.sdk import BaseOperator

#: XCom key under which the Apikley task id is pushed as soon as it is known, before any wait.
APIKLEY_TASK_ID_XCOM_KEY = "apikley_task_id"
#: Set by a task on its operator: ``False`` from the start of ``execute``, then the id it pushed; so
#: the link, computed in the same process when the task ends, asks for nothing a failed task never pushed.
PUSHED_ID_ATTRIBUTE = "_apikley_task_id_pushed"
#: Where the provider's app is mounted on the api-server (see :mod:`airflow_provider_qwen.api_server.plugin`).
API_SERVER_PREFIX = "/apikley"


def _api_server_url(path: str) -> str:
    return conf.get("api", "base_url", fallback="").rstrip("/") + API_SERVER_PREFIX + path


def task_page_url(apikley_conn_id: str, apikley_task_id: str) -> str:
    """The api-server page of an Apikley task, read through ``apikley_conn_id``."""
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
        ``route_keys``, or no ``webhook_secret`` to check Apikley's signature with.
    """
    if asset_uri is None and apikley_conn_id is None:
        return _api_server_url("/callback")
    from airflow_provider_qwen.api_server.signing import route_token
    from airflow_provider_qwen.hooks.apikley import ApikleyHook

    conn_id = apikley_conn_id or ApikleyHook.default_conn_name
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


class ApikleyTaskLink(BaseOperatorLink):
    """Opens the Apikley task a task instance submitted or waits for: its state and results."""

    name = "Apikley task"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """
        The task's page, once its id is in XCom; empty before, and quietly so.

        Airflow computes the link when the task instance ends, also after a failure that came before
        any Apikley task existed (an input error). Asking for a missing XCom there makes the worker's
        supervisor log ``XCom not found`` as an error in the task's log, which reads like a second
        failure; so the link first counts the ids that exist, which logs nothing.
        """
        pushed = getattr(operator, PUSHED_ID_ATTRIBUTE, None)
        if pushed is False or (pushed is None and not compat.xcom_may_exist(ti_key, APIKLEY_TASK_ID_XCOM_KEY)):
            return ""
        if pushed:
            return task_page_url(operator.apikley_conn_id, str(pushed))
        apikley_task_id = XCom.get_value(ti_key=ti_key, key=APIKLEY_TASK_ID_XCOM_KEY)
        if not apikley_task_id:
            return ""
        return task_page_url(operator.apikley_conn_id, str(apikley_task_id))
