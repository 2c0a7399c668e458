"""The "Apikley task" extra link, shown on the operator's and the sensor's task instances."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom, conf

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.providers.common.compat.sdk import BaseOperator

#: XCom key under which the Apikley task id is pushed as soon as it is known, before any wait.
APIKLEY_TASK_ID_XCOM_KEY = "apikley_task_id"
#: Where the provider's app is mounted on the api-server (see :mod:`airflow_provider_qwen.api_server.plugin`).
API_SERVER_PREFIX = "/apikley"


def task_page_url(apikley_conn_id: str, apikley_task_id: str) -> str:
    """The api-server page of an Apikley task, read through ``apikley_conn_id``."""
    base_url = conf.get("api", "base_url", fallback="").rstrip("/")
    conn_id, task_id = quote(apikley_conn_id, safe=""), quote(apikley_task_id, safe="")
    return f"{base_url}{API_SERVER_PREFIX}/connections/{conn_id}/tasks/{task_id}"


class ApikleyTaskLink(BaseOperatorLink):
    """Opens the Apikley task a task instance submitted or waits for: its state and results."""

    name = "Apikley task"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """The task's page, once its id is in XCom; empty before."""
        apikley_task_id = XCom.get_value(ti_key=ti_key, key=APIKLEY_TASK_ID_XCOM_KEY)
        if not apikley_task_id:
            return ""
        return task_page_url(operator.apikley_conn_id, str(apikley_task_id))
