"""Waiting for any Apikley task, by id: poking from a worker or deferred to the triggerer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    AirflowSensorTimeout,
    BaseSensorOperator,
    ObjectStoragePath,
    PokeReturnValue,
    conf,
)

from airflow_provider_qwen.events import TaskEvent, outcome_line, summary_from_record
from airflow_provider_qwen.exceptions import ApikleyTaskFailedError, ApikleyTaskTimeoutError
from airflow_provider_qwen.hooks import DEFAULT_CONN_ID
from airflow_provider_qwen.links import APIKLEY_TASK_ID_XCOM_KEY, PUSHED_ID_ATTRIBUTE, ApikleyTaskLink
from airflow_provider_qwen.names import check_result_name
from airflow_provider_qwen.results import edit_result_name, request_image_urls, with_stored_results
from airflow_provider_qwen.triggers.apikley import TRIGGER_GRACE, ApikleyTaskTrigger
from airflow_provider_qwen.validation import check_task_id
from airflow_provider_qwen.waits import Done, TaskWait, query

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_qwen.hooks.apikley import ApikleyHook


#: Seconds between pokes when none is given: the slow end of Apikley's advice for a task's first 30 s.
ADVISED_POKE_SECONDS = 3.0


def task_id_of(value: object) -> str:
    """
    Return the Apikley task id in ``value``: an id, or the dict an Apikley operator returns.

    :raises ApikleyInputError: naming the value and the rule, when there is no id of the right shape.
    """
    if isinstance(value, dict):
        value = value.get(APIKLEY_TASK_ID_XCOM_KEY, value)
    return check_task_id(value)


class ApikleyTaskSensor(BaseSensorOperator):
    """
    Wait until an Apikley task ends; succeed with its results, fail if its generation failed.

    Returns (and pushes to XCom) ``{"apikley_task_id", "state", "result_urls", "input",
    "credits_consumed"}``, the same dict as
    :class:`~airflow_provider_qwen.operators.qwen.QwenImageToImageOperator`, with ``stored`` when
    ``output_path`` is set. A failed
    generation fails the sensor without retries (waiting again cannot change it); with
    ``soft_fail`` it and a timeout skip the task instead.

    :param apikley_task_id: the task to wait for (templated): its id, or the dict an Apikley operator
        returns, so a sensor maps over the operator's output as it is:
        ``ApikleyTaskSensor.partial(task_id="wait").expand(apikley_task_id=edit.output)``.
    :param output_path: a folder (``ObjectStoragePath`` or URI, templated) to copy the results into
        once the task succeeds, as the operator does; by default the ``output_path`` that the
        operator's returned dict hands on, if any.
    :param result_name: what the results are called in ``output_path`` (templated), as the
        operator's ``result_name``; by default the name the operator's returned dict hands on, else
        the name of the task's source image (with the sensor's map index when it is mapped).
    :param apikley_conn_id: the Airflow connection to Apikley.
    :param max_consecutive_poll_errors: how many status queries in a row may fail transiently (429,
        455, 5xx, network errors) before the task fails with the last error. A failed poke is
        counted and asked again at the next poke; in ``reschedule`` mode the count starts afresh
        with each poke.
    :param deferrable: wait in the triggerer, freeing the worker slot.
    :param poke_interval: seconds between status queries, in both modes (deferred, varied by up to
        10% either way); by default Apikley's advised cadence (deferred: 2-3 s at first, slowing to
        15-30 s after two minutes; poking: every 3 s).
    :param timeout: seconds to wait before failing (or skipping, with ``soft_fail``).
    :param awaits_callback: the task calls back to this deployment's receiver
        (:func:`~airflow_provider_qwen.api_server.urls.callback_url`), so a deferred wait ends on
        the callback and asks Apikley only every ``[apikley] callback_fallback_seconds``; by default
        what the operator's returned dict hands on.
    """

    template_fields: Sequence[str] = ("apikley_task_id", "apikley_conn_id", "output_path", "result_name")
    operator_extra_links = (ApikleyTaskLink(),)

    def __init__(
        self,
        *,
        apikley_task_id: str,
        apikley_conn_id: str = DEFAULT_CONN_ID,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: float | None = None,
        timeout: float = 3600.0,
        max_consecutive_poll_errors: int = 10,
        output_path: str | ObjectStoragePath | None = None,
        result_name: str | None = None,
        awaits_callback: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            poke_interval=ADVISED_POKE_SECONDS if poke_interval is None else poke_interval, timeout=timeout, **kwargs
        )
        self.poll_interval = poke_interval  # None: the trigger follows the advised cadence
        self.apikley_task_id = apikley_task_id
        self.apikley_conn_id = apikley_conn_id
        self.max_consecutive_poll_errors = max_consecutive_poll_errors
        self.deferrable = deferrable
        self.output_path = output_path
        self.result_name = result_name
        self.awaits_callback = awaits_callback
        #: The name an operator's returned dict handed on with ``output_path``.
        self._handed_on_name: str | None = None

    @cached_property
    def hook(self) -> ApikleyHook:
        """The hook for ``apikley_conn_id``."""
        from airflow_provider_qwen.hooks.apikley import ApikleyHook  # HTTP clients: imported when the task runs

        return ApikleyHook(self.apikley_conn_id)

    @cached_property
    def _wait(self) -> TaskWait:
        # The sensor's own timeout ends the wait; this counts failed queries across pokes.
        return TaskWait(
            self.apikley_task_id,
            submitted_at=time.time(),
            poll_interval=self.poke_interval,
            max_consecutive_poll_errors=self.max_consecutive_poll_errors,
            logger=self.log,
        )

    def poke(self, context: Context) -> PokeReturnValue | bool:
        """Query the task once; done when it has ended. A transient failure is a poke that is not done."""
        step = self._wait.after(query(self.hook, self.apikley_task_id), time.time())
        if not isinstance(step, Done):
            self.log.info("Apikley task %s is %s", self.apikley_task_id, self._wait.last_state or "not known yet")
            return False
        try:
            return PokeReturnValue(is_done=True, xcom_value=self._stored(summary_from_record(step.record), context))
        except ApikleyTaskFailedError as err:
            raise AirflowFailException(str(err)) from err

    def execute(self, context: Context) -> dict[str, Any] | None:
        """Poke, or check once and then defer to :class:`ApikleyTaskTrigger`."""
        setattr(self, PUSHED_ID_ATTRIBUTE, False)  # until an id exists: see ApikleyTaskLink
        if self.result_name is not None:
            check_result_name(self.result_name)
        if not self.output_path:
            self.output_path = self._from_operator("output_path")
            self._handed_on_name = self._from_operator("result_name")
        if self.awaits_callback is None:
            self.awaits_callback = bool(self._from_operator("awaits_callback"))
        self.apikley_task_id = task_id_of(self.apikley_task_id)
        context["ti"].xcom_push(key=APIKLEY_TASK_ID_XCOM_KEY, value=self.apikley_task_id)  # for the extra link
        setattr(self, PUSHED_ID_ATTRIBUTE, self.apikley_task_id)
        if not self.deferrable:
            return super().execute(context)
        done = self.poke(context)
        if isinstance(done, PokeReturnValue):
            return done.xcom_value
        output_path = str(self.output_path) if self.output_path else None
        self.defer(
            trigger=ApikleyTaskTrigger(
                apikley_task_id=self.apikley_task_id,
                apikley_conn_id=self.apikley_conn_id,
                deadline=time.time() + self.timeout,
                poll_interval=self.poll_interval,
                max_consecutive_poll_errors=self.max_consecutive_poll_errors,
                # the check just made counts: the trigger asks one interval later, not at once
                submitted_at=time.time(),
                expected_duration=self.poke_interval,
                with_input=True,
                # what execute worked out comes back in the event: a fresh instance resumes, and
                # ``airflow dags test`` resumes it with the event alone
                output_path=output_path,
                result_name=self._handed_on_name,
                deferred_at=time.time(),
                awaits_callback=self.awaits_callback,
            ),
            method_name="execute_complete",
            # the same for events of a trigger an older provider started, which do not carry it
            kwargs={"output_path": output_path},
            timeout=timedelta(seconds=self.timeout) + TRIGGER_GRACE,
        )

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None, output_path: str | None = None
    ) -> dict[str, Any]:
        """
        Turn the trigger's event into the result, or the failure it reports.

        :param output_path: where :meth:`execute` found the results are to be copied (its own
            argument, or the one the operator's dict handed on), for an event that does not carry it.
        """
        try:
            parsed = TaskEvent.from_payload(event)
            setattr(self, PUSHED_ID_ATTRIBUTE, parsed.apikley_task_id)  # a fresh instance: the link's mark again
            if (carried := parsed.output_path or output_path) and not isinstance(self.output_path, ObjectStoragePath):
                self.output_path = carried
            self._handed_on_name = parsed.result_name or self._handed_on_name or self._from_operator("result_name")
            return self._stored(parsed.summary(), context)
        except ApikleyTaskTimeoutError as err:
            raise AirflowSensorTimeout(str(err)) from err
        except ApikleyTaskFailedError as err:
            raise AirflowFailException(str(err)) from err

    def _stored(self, summary: dict[str, Any], context: Context) -> dict[str, Any]:
        if self.output_path:
            summary = with_stored_results(self.hook, summary, self.output_path, self._results_named(summary, context))
        self.log.info("%s", outcome_line(summary))
        return summary

    def _from_operator(self, key: str) -> Any:
        """Return what the operator's dict given as ``apikley_task_id`` hands on under ``key``, if anything."""
        return self.apikley_task_id.get(key) if isinstance(self.apikley_task_id, dict) else None

    def _results_named(self, summary: dict[str, Any], context: Context) -> str | None:
        """Return what the results are called in ``output_path`` (see the ``result_name`` parameter)."""
        if self.result_name is None and self._handed_on_name:
            return self._handed_on_name
        return edit_result_name(
            self.result_name,
            request_image_urls(summary.get("input") or {}).values(),
            getattr(context["ti"], "map_index", None),
            summary["apikley_task_id"],
        )
