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
from packaging.version import Version

import airflow
from airflow.providers.common.compat.sdk import BaseOperator
from airflow.triggers.base import TaskSuccessEvent

from airflow_provider_qwen import _compat as compat
from airflow_provider_qwen.links import APIKLEY_TASK_ID_XCOM_KEY
from airflow_provider_qwen.triggers.apikley import ApikleyTaskTrigger
from tests.conftest import submit_edit

#: Which internals exist depends on this Airflow's line.
AIRFLOW_LINE = Version(Version(airflow.__version__).base_version)
FROM_3_2, FROM_3_3 = AIRFLOW_LINE.release[:2] >= (3, 2), AIRFLOW_LINE.release[:2] >= (3, 3)

TI_KEY = SimpleNamespace(dag_id="edits", task_id="edit", run_id="manual__1", map_index=0, try_number=1)


# ---- trigger_xcom_set: ending a task from the triggerer ---------------------------------------------


def test_the_task_sdks_xcom_set_takes_a_mapped_length_here():
    from airflow.sdk.execution_time.xcom import XCom

    assert compat._takes(XCom.set, "_mapped_length")  # the name every supported line has
    assert compat.trigger_xcom_set() is not None


def test_an_xcom_set_that_names_it_mapped_length_is_called_so(monkeypatch):
    calls = []

    def set_with_older_name(key, value, dag_id, task_id, run_id, map_index=-1, mapped_length=None):
        calls.append((key, mapped_length))

    monkeypatch.setattr("airflow.sdk.execution_time.xcom.XCom.set", set_with_older_name)
    push = compat.trigger_xcom_set()
    assert push is not None
    push(key="return_value", value=1, mapped_length=3, dag_id="d", task_id="t", run_id="r", map_index=-1)
    push(key="link", value="u", dag_id="d", task_id="t", run_id="r", map_index=-1)
    assert calls == [("return_value", 3), ("link", None)]


def test_a_catch_all_kwargs_does_not_count_as_taking_an_argument():
    def catch_all(*, asset, **kwargs):
        pass

    assert compat._takes(catch_all, "asset")
    assert not compat._takes(catch_all, "partition_key")


def test_which_way_a_feature_goes_is_logged_once(caplog, monkeypatch):
    compat._decided.cache_clear()
    monkeypatch.setattr("airflow.sdk.execution_time.xcom.XCom.set", lambda key, value: None)
    with caplog.at_level("INFO", logger=compat.__name__):
        assert compat.trigger_xcom_set() is None
        assert compat.trigger_xcom_set() is None
    (line,) = [record for record in caplog.records if record.name == compat.__name__]
    assert line.levelname == "WARNING" and "resume on a worker" in line.getMessage()
    compat._decided.cache_clear()


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


def test_the_asset_manager_takes_what_this_line_has():
    from airflow.assets.manager import asset_manager

    register = asset_manager.register_asset_change
    assert compat._takes(register, "partition_key") is FROM_3_2
    for argument in ("source_is_api", "api_user_teams", "callback_sink"):
        assert compat._takes(register, argument) is FROM_3_3, argument


def test_the_receivers_event_carries_every_argument_this_line_takes(monkeypatch):
    from airflow.assets.manager import asset_manager

    calls = []
    register = mock.create_autospec(asset_manager.register_asset_change, side_effect=lambda **kw: calls.append(kw))
    monkeypatch.setattr(asset_manager, "register_asset_change", register)
    sink: list = []
    compat.register_asset_change(
        asset="asset", extra={}, session=None, partition_key="t1", teams={"editors"}, callback_sink=sink
    )
    (arguments,) = calls
    assert ("partition_key" in arguments) is FROM_3_2
    if FROM_3_3:
        assert arguments["source_is_api"] is True and arguments["api_user_teams"] == {"editors"}
        assert arguments["callback_sink"] is sink
    else:
        assert not {"source_is_api", "api_user_teams", "callback_sink"} & set(arguments)


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
