"""The "Apikley task" extra link, to the task's page on the api-server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom

from airflow_provider_qwen import _compat as compat
from airflow_provider_qwen.api_server.urls import callback_url, task_page_url
from airflow_provider_qwen.hooks import DEFAULT_CONN_ID

__all__ = ["APIKLEY_TASK_ID_XCOM_KEY", "PUSHED_ID_ATTRIBUTE", "ApikleyTaskLink", "callback_url", "task_page_url"]

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: XCom key under which the Apikley task id is pushed as soon as it is known, before any wait.
APIKLEY_TASK_ID_XCOM_KEY = "apikley_task_id"
#: Set by a task on its operator: ``False`` from the start of ``execute``, then the id it pushed; so
#: the link, computed in the same process when the task ends, asks for nothing a failed task never pushed.
PUSHED_ID_ATTRIBUTE = "_apikley_task_id_pushed"


class ApikleyTaskLink(BaseOperatorLink):
    """Opens the Apikley task a task instance submitted or waits for: its state and results."""

    name = "Apikley task"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """
        Return the task's page, once its id is in XCom; empty before, and quietly so.

        Airflow computes the link when the task instance ends, also after a failure that came before
        any Apikley task existed (an input error). Asking for a missing XCom there makes the worker's
        supervisor log ``XCom not found`` as an error in the task's log, which reads like a second
        failure; so the link first counts the ids that exist, which logs nothing.
        """
        pushed = getattr(operator, PUSHED_ID_ATTRIBUTE, None)
        if pushed is False or (pushed is None and not compat.xcom_may_exist(ti_key, APIKLEY_TASK_ID_XCOM_KEY)):
            return ""
        if pushed:
            return task_page_url(_conn_id(operator), str(pushed))
        apikley_task_id = XCom.get_value(ti_key=ti_key, key=APIKLEY_TASK_ID_XCOM_KEY)
        if not apikley_task_id:
            return ""
        return task_page_url(_conn_id(operator), str(apikley_task_id))


def _conn_id(operator: BaseOperator) -> str:
    """Return the connection of an operator of this provider (each has ``apikley_conn_id``)."""
    return getattr(operator, "apikley_conn_id", DEFAULT_CONN_ID)
