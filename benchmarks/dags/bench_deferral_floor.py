"""
Benchmark floor (f): N mapped tasks that defer to Airflow's own ``DateTimeTrigger`` for as long as an edit takes.

Each task defers at once for ``wait_seconds`` and is ended by its trigger in the triggerer
(``end_from_trigger``), as the provider's deferrable edit is by default: no Apikley, no result,
only Airflow's price for deferring a task and ending it there. ``python -m benchmarks.compare_waits``
runs it beside the edits on the same deployment, so what is left of the provider's cost can be
told from what any deferral costs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum

from airflow.providers.common.compat.sdk import DAG, BaseOperator, Param, task
from airflow.providers.standard.triggers.temporal import DateTimeTrigger

#: The XCom key of the moment each task's wait ends, in epoch seconds.
MOMENT_XCOM_KEY = "moment"


class WaitLikeAnEdit(BaseOperator):
    """Defer for ``seconds`` to ``DateTimeTrigger``, which ends the task in the triggerer."""

    def __init__(self, *, seconds: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds = seconds

    def execute(self, context: Any) -> None:
        moment = pendulum.now("UTC") + timedelta(seconds=float(self.seconds))
        # when the wait is over, as an edit's completeTime is: the benchmark times the task's end from it
        context["ti"].xcom_push(key=MOMENT_XCOM_KEY, value=moment.timestamp())
        self.defer(trigger=DateTimeTrigger(moment=moment, end_from_trigger=True), method_name="execute_complete")

    def execute_complete(self, context: Any, event: Any = None) -> None:
        """Where a runner that does not end tasks in the triggerer (``dag.test()``) resumes: nothing to do."""


with DAG(
    dag_id="bench_deferral_floor",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    params={
        "edits": Param(50, type="integer", minimum=1, maximum=1000),
        "image_url": Param("https://files.example.org/catalog/sneaker.png", type="string"),
        "wait_seconds": Param(6.0, type="number", minimum=0),
    },
    tags=["benchmark", "floor"],
):

    @task
    def plan_waits(params: dict[str, Any] | None = None) -> list[float]:
        """One wait per edit the other workloads make, each as long as an edit."""
        params = params or {}
        return [float(params["wait_seconds"])] * params["edits"]

    WaitLikeAnEdit.partial(task_id="wait").expand(seconds=plan_waits())
