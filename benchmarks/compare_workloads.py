"""The ways of running N mapped edits that ``compare_waits`` measures, and how to read their results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The benchmark DAGs (``bench_*.py``).
DAGS_FOLDER = Path(__file__).parent / "dags"


@dataclass(frozen=True)
class Workload:
    """
    One benchmark DAG.

    :param key: the short name the table uses, ``a``, ``b``...
    :param dag_id: the DAG's id.
    :param label: what it is, in a few words.
    :param result_task_id: the mapped task whose return values are the edits' results, and whose end
        is each edit's end.
    :param id_task_id: the mapped task whose return values name each edit's Apikley task.
    :param edits: whether it edits at all; the floor does not, it only runs as many tasks.
    """

    key: str
    dag_id: str
    label: str
    result_task_id: str
    id_task_id: str
    edits: bool = True


PROVIDER = Workload("a", "bench_provider_deferrable", "provider, deferrable (defaults)", "edit", "edit")
HTTP_SENSOR = Workload("b", "bench_http_sensor", "HttpOperator, then HttpSensor", "wait", "create")
PYTHON_SLEEP = Workload("c", "bench_python_sleep", "@task, requests, sleep", "edit", "edit")
HTTP_TASK_GROUP = Workload(
    "d", "bench_http_task_group", "HttpOperator -> HttpSensor per edit", "one_edit.wait", "one_edit.create"
)
#: (a), each edit called back to the deployment's receiver, its wait ending on the callback.
PROVIDER_CALLBACKS = Workload(
    "g", "bench_provider_callbacks", "provider, deferrable, ending on callbacks", "edit", "edit"
)
#: The ways of editing.
WORKLOADS: tuple[Workload, ...] = (PROVIDER, HTTP_SENSOR, PYTHON_SLEEP, HTTP_TASK_GROUP, PROVIDER_CALLBACKS)
#: Airflow's own floor: as many mapped tasks, each returning at once.
NOOP = Workload("e", "bench_noop", "PythonOperator returning at once (the floor)", "noop", "noop", edits=False)
#: Airflow's price for deferring: as many mapped tasks, each deferring for as long as an edit, ended in the triggerer.
DEFERRAL_FLOOR = Workload(
    "f", "bench_deferral_floor", "DateTimeTrigger as long as an edit (deferral floor)", "wait", "wait", edits=False
)
#: The workloads that edit nothing: what Airflow itself costs.
FLOORS: tuple[Workload, ...] = (NOOP, DEFERRAL_FLOOR)


def result_urls(value: Any) -> list[str]:
    """
    The result URLs in one edit's return value: the provider returns a summary, the others the URLs.

    A summary of an edit that did not succeed has none.
    """
    if isinstance(value, dict):
        return list(value.get("result_urls") or []) if value.get("state") == "success" else []
    return [str(url) for url in value or []]


def apikley_task_id(value: Any) -> str:
    """The Apikley task id in the return value of a workload's ``id_task_id``: a summary, or the bare id."""
    return value["apikley_task_id"] if isinstance(value, dict) else str(value)


def dag_conf(edits: int, image_url: str, wait_seconds: float | None = None) -> dict[str, Any]:
    """
    The run configuration every benchmark DAG takes.

    :param wait_seconds: how long an edit takes, for the deferral floor, which waits that long instead.
    """
    conf: dict[str, Any] = {"edits": edits, "image_url": image_url}
    return conf if wait_seconds is None else {**conf, "wait_seconds": wait_seconds}
