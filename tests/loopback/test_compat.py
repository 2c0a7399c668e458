"""
Each private Airflow internal the provider uses, present on this Airflow line, and its fallback when it is taken away.

``make test`` runs these on Airflow 3.3 and ``make test-compat`` on 3.1 and 3.2: the first test of
each pair proves the internal is there (so the fast path is taken), the second that losing it
takes the safe path instead of crashing.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from unittest import mock

import pytest

from airflow.providers.common.compat.sdk import BaseOperator
from airflow.triggers.base import TaskSuccessEvent

from airflow_provider_qwen import _compat as compat
from airflow_provider_qwen.links import APIKLEY_TASK_ID_XCOM_KEY
from airflow_provider_qwen.triggers.apikley import ApikleyTaskTrigger
from tests.conftest import submit_edit

TI_KEY = SimpleNamespace(dag_id="edits", task_id="edit", run_id="manual__1", map_index=0, try_number=1)


# ---- trigger_xcom_set: ending a task from the triggerer ---------------------------------------------


def test_the_task_sdks_xcom_set_takes_a_mapped_length_here():
    assert compat.trigger_xcom_set() is not None


async def test_without_a_mapped_length_argument_a_worker_resumes_the_task(apikley, source_image_url, monkeypatch):
    def set_without_mapped_length(key, value, dag_id, task_id, run_id, map_index=-1):
        raise AssertionError("not called: the trigger cannot record a mapped length with it")

    monkeypatch.setattr("airflow.sdk.execution_time.xcom.XCom.set", set_without_mapped_length)
    task_id = submit_edit(source_image_url)
    apikley.wait_until_ended(task_id)
    trigger = ApikleyTaskTrigger(task_id, poll_interval=0.01, end_task_on_success=True)
    trigger.task_instance = SimpleNamespace(dag_id="edits", task_id="edit", run_id="manual__1", map_index=-1)
    (event,) = [event async for event in trigger.run()]
    assert not isinstance(event, TaskSuccessEvent)
    assert event.payload["status"] == "success" and event.payload["apikley_task_id"] == task_id


# ---- maps_over_result: whether downstream maps over an edit -----------------------------------------


def test_mapped_dependants_are_found_here():
    from airflow.providers.common.compat.sdk import DAG, task

    with DAG("maps_over", schedule=None):
        edit = BaseOperator(task_id="edit")
        task(lambda field: field, task_id="per_field").expand(field=edit.output)
        alone = BaseOperator(task_id="alone")
    assert compat.maps_over_result(edit) is True
    assert compat.maps_over_result(alone) is False


def test_without_iter_mapped_dependants_mapping_is_unknown(monkeypatch):
    for klass in BaseOperator.__mro__:
        if "iter_mapped_dependants" in vars(klass):
            monkeypatch.delattr(klass, "iter_mapped_dependants")
    assert compat.maps_over_result(BaseOperator(task_id="edit")) is None


def test_a_changed_iter_mapped_dependants_is_unknown_too(monkeypatch):
    operator = BaseOperator(task_id="edit")
    monkeypatch.setattr(operator, "iter_mapped_dependants", mock.Mock(side_effect=AttributeError("dag")), raising=False)
    assert compat.maps_over_result(operator) is None


# ---- post_execute_hook -----------------------------------------------------------------------------


def test_a_post_execute_argument_or_override_is_seen_here():
    class Overrides(BaseOperator):
        def post_execute(self, context, result=None):
            pass

    assert compat.post_execute_hook(BaseOperator(task_id="plain")) is None
    assert compat.post_execute_hook(BaseOperator(task_id="given", post_execute=print)) is print
    assert compat.post_execute_hook(Overrides(task_id="overrides")) is not None


def test_without_the_private_attribute_a_hook_is_assumed(monkeypatch):
    operator = BaseOperator(task_id="plain")
    for klass in type(operator).__mro__:
        monkeypatch.delattr(klass, "_post_execute_hook", raising=False)
    operator.__dict__.pop("_post_execute_hook", None)
    assert compat.post_execute_hook(operator) is True  # so the task ends on a worker, which runs it


# ---- xcom_may_exist: the extra link's quiet check ----------------------------------------------------


@pytest.fixture
def supervisor(monkeypatch):
    """A task process's ``SUPERVISOR_COMMS``, answering ``GetXComCount`` with the count given."""
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import XComCountResponse

    comms = mock.Mock()
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    return lambda count: setattr(comms.send, "return_value", XComCountResponse(len=count)) or comms


def test_the_supervisor_counts_xcoms_here(supervisor):
    comms = supervisor(0)
    assert compat.xcom_may_exist(TI_KEY, APIKLEY_TASK_ID_XCOM_KEY) is False
    (request,) = comms.send.call_args.args
    assert (type(request).__name__, request.key, request.task_id) == ("GetXComCount", APIKLEY_TASK_ID_XCOM_KEY, "edit")
    supervisor(2)
    assert compat.xcom_may_exist(TI_KEY, APIKLEY_TASK_ID_XCOM_KEY) is True


def test_without_get_xcom_count_the_link_looks_the_xcom_up(supervisor, monkeypatch):
    supervisor(0)
    monkeypatch.delattr("airflow.sdk.execution_time.comms.GetXComCount")
    assert compat.xcom_may_exist(TI_KEY, APIKLEY_TASK_ID_XCOM_KEY) is True


def test_outside_a_task_process_the_link_looks_the_xcom_up(monkeypatch):
    monkeypatch.delitem(sys.modules, "airflow.sdk.execution_time.task_runner", raising=False)
    assert compat.xcom_may_exist(TI_KEY, APIKLEY_TASK_ID_XCOM_KEY) is True


# ---- register_asset_change: the callback receiver's event ------------------------------------------


def test_the_asset_manager_takes_a_partition_key_here():
    from airflow.assets.manager import asset_manager

    assert compat._takes(asset_manager.register_asset_change, "partition_key")


def test_an_asset_manager_without_partitions_records_the_event_unpartitioned(monkeypatch):
    from airflow.assets.manager import asset_manager

    calls = []
    monkeypatch.setattr(
        asset_manager, "register_asset_change", lambda *, asset, extra, session: calls.append((asset, extra))
    )
    compat.register_asset_change(asset="asset", extra={"apikley_task_id": "t"}, session=None, partition_key="t")
    assert calls == [("asset", {"apikley_task_id": "t"})]


# ---- requires_access_connection: who may open the task page -------------------------------------------


def test_the_api_servers_connection_check_is_used_here():
    assert compat.requires_access_connection("GET") is not compat._refuse_unchecked


def test_without_the_connection_check_the_task_page_refuses_everyone(monkeypatch):
    from fastapi import HTTPException

    monkeypatch.setitem(sys.modules, "airflow.api_fastapi.core_api.security", None)  # import fails
    check = compat.requires_access_connection("GET")
    with pytest.raises(HTTPException) as excinfo:
        check()
    assert excinfo.value.status_code == 503
