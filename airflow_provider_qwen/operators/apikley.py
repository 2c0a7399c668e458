"""Submitting a task for any Apikley model, and (optionally) waiting for it."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator, ObjectStoragePath, conf

from airflow_provider_qwen import _compat as compat
from airflow_provider_qwen.budget import DEFAULT_RUN_BUDGET, check_credits
from airflow_provider_qwen.callback_waits import calls_back_to_receiver
from airflow_provider_qwen.create_pace import CreatePace
from airflow_provider_qwen.events import (
    EventStatus,
    ResumeEvent,
    TaskEvent,
    outcome_line,
    summary_from_record,
    task_summary,
    with_replaced,
)
from airflow_provider_qwen.exceptions import (
    ApikleyConnectionError,
    ApikleyError,
    ApikleyInputError,
    ApikleyInsufficientCreditsError,
    ApikleyNotFoundError,
    ApikleyTaskFailedError,
)
from airflow_provider_qwen.hooks import DEFAULT_CONN_ID
from airflow_provider_qwen.lineage import add_outlet_extra, edit_lineage, lineage_expected, outlet_extra, result_uris
from airflow_provider_qwen.links import APIKLEY_TASK_ID_XCOM_KEY, PUSHED_ID_ATTRIBUTE, ApikleyTaskLink
from airflow_provider_qwen.models import TaskRecord, TaskState
from airflow_provider_qwen.names import check_result_name
from airflow_provider_qwen.results import edit_result_name, request_image_urls, with_stored_results
from airflow_provider_qwen.resume import (
    OrphanedIntentPolicy,
    Takeover,
    check_orphaned_intent_policy,
    create_recorded,
    may_have_run_before,
    read_saved_task,
    request_fingerprint,
    saving_to,
    surely_not_created,
    take_over,
    try_deadline,
)
from airflow_provider_qwen.run_budget import Ended, RunBudget, reserve_edits
from airflow_provider_qwen.storage import check_writable
from airflow_provider_qwen.triggers.apikley import TRIGGER_GRACE, ApikleyTaskTrigger
from airflow_provider_qwen.validation import check_callback_url, check_input, check_model, load_input_schema
from airflow_provider_qwen.waits import TaskWait, wait_until_done

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context
    from airflow.sdk.types import RuntimeTaskInstanceProtocol

    from airflow_provider_qwen.hooks.apikley import ApikleyHook

#: Key under which the submitted task is remembered across tries (Airflow 3.3's task state store).
RESUME_KEY = "apikley_task"

#: The methods Airflow's task runner calls on a worker that resumes a deferred task, in place of
#: ``execute``: ``resume_execution``, which calls ``execute_complete``. A subclass's override of
#: either runs only where the task resumes on a worker. (``post_execute``, argument or override,
#: is checked by :func:`~airflow_provider_qwen._compat.post_execute_hook`; ``pre_execute`` and
#: ``on_execute_callback`` run before ``execute`` too, so a task ended in the triggerer has run
#: them once, as a task that never deferred has.)
RUN_AFTER_RESUMING = ("resume_execution", "execute_complete")


class ApikleyCreateTaskOperator(BaseOperator):
    """
    Run a task of any Apikley model: submit ``input`` to ``model``, and (optionally) wait for it.

    ``model`` and ``input`` (a dict) are templated, and checked after templates render and before
    any request: the model name's shape, ``input`` a JSON object of at most 64 KiB, and, with
    ``input_schema``, every field against it. So are ``callback_url`` (absolute), ``output_path``
    (writable) and, with ``min_credits``, the balance: a bad value fails the task without spending
    credits. Which fields a model takes is otherwise Apikley's to check: its refusal (422) raises
    :class:`~airflow_provider_qwen.exceptions.ApikleyValidationError` and is never resubmitted.

    The Apikley task id goes to XCom (key ``apikley_task_id``) as soon as the task is created.
    With ``wait_for_completion`` the operator then waits for the task, in the triggerer when
    ``deferrable``, and returns ``{"apikley_task_id", "state", "result_urls", "input",
    "credits_consumed"}``, plus ``result`` (Apikley's ``resultJson``, parsed) when it holds more
    than ``resultUrls``; a failed task fails with Apikley's failCode and failMsg. ``result_urls``
    holds every http(s) URL in the result, and ``output_path`` copies each. Result URLs expire
    (assume 24 hours). A failure after the task was created says what a retry will do.

    Right before its create, an edit takes a slot from the create pace that every edit through its
    connection shares across the deployment (kept on the api-server, see
    :mod:`~airflow_provider_qwen.create_pace`) and waits for it, so mapped edits on many workers stay
    under the account's create limit (the connection's extras ``creates_per_window`` and
    ``window_seconds``) instead of each meeting it with a 429. A pace that cannot be used costs one
    warning: the edit creates at once and backs off on 429, as without it. The connection's extra
    ``shared_create_pace`` set to false turns it off.

    On Airflow 3.3 (its task state store) a retry resumes the Apikley task an earlier try created
    only when it would send the same request (model, input and callback URL): the same input
    resumes without paying again. A retry whose request changed submits anew, logs the abandoned
    task at WARNING, and its result gains ``replaced_apikley_task_id``, the id of that task (already
    paid for). An earlier try lost between sending ``createTask`` and saving the answer leaves only
    its intent behind, and ``on_orphaned_intent`` decides. Airflow 3.1 and 3.2 have no task state
    store: a retry there submits anew.

    :param model: the Apikley model, e.g. ``qwen/text-to-image`` (templated).
    :param input: the model's ``input`` object (templated, a dict).
    :param input_schema: a JSON Schema (a dict, or the path of a JSON file) to check ``input``
        against before any request, with errors naming the field, the value and the rule.
    :param callback_url: where Apikley POSTs the task's details when it ends: an absolute http(s)
        URL, such as :func:`~airflow_provider_qwen.api_server.urls.callback_url` builds from ``[api] base_url``.
    :param apikley_conn_id: the Airflow connection to Apikley.
    :param max_consecutive_poll_errors: how many status queries in a row may fail transiently
        (429, 455, 5xx, network errors) before the task fails with the last error; each failure
        backs off exponentially, with jitter.
    :param wait_for_completion: wait for the task to end; ``False`` returns right after submitting,
        and an :class:`~airflow_provider_qwen.sensors.apikley.ApikleyTaskSensor` given the returned
        dict waits for it (and copies the results to ``output_path``, which the dict hands on).
    :param deferrable: wait in the triggerer, freeing the worker slot.
    :param poll_interval: seconds between status queries, varied by up to 10% either way so that
        many waits do not poll in step; by default Apikley's advised cadence (2-3 s at first,
        slowing to 15-30 s after two minutes).
    :param timeout: seconds to wait for the Apikley task before failing the Airflow task.
    :param expected_duration: seconds the task is expected to take: the first status query waits
        that long after submitting. By default the triggerer learns it from the tasks of this model it saw end
        (a blocking wait starts asking at once).
    :param end_in_triggerer: when a deferred task succeeds, end the task from the triggerer
        (its XCom value and extra link pushed there) instead of resuming it on a worker, which saves a
        worker run and seconds per task; results are then copied to ``output_path`` from the
        triggerer. ``None`` (the default) does so only when a worker would add nothing: no
        ``outlets`` (Airflow records asset events only when a worker ends a task), no
        ``on_success_callback`` or ``post_execute``, no subclass overriding ``execute_complete``
        or ``resume_execution`` (what a resumed worker runs), no ``multiple_outputs``,
        ``do_xcom_push`` left on, ``output_path`` a URI string (not an ``ObjectStoragePath`` object,
        whose connection the trigger could not carry), no extra link but the provider's own, and no
        OpenLineage listener waiting for the task's facets. ``True`` together with any of those
        arguments or overrides is refused when the DAG is parsed; with OpenLineage enabled for the
        task, it resumes on a worker. Failures always resume on a worker, which raises the error.
    :param resubmit_failed_task: on a retry, when the task an earlier try submitted ended in
        ``fail``, submit a new one (the default); ``False`` fails the retry with the same error.
    :param on_orphaned_intent: what a retry does when an earlier try began ``createTask`` and saved
        no task id (its worker was lost in between), so Apikley may have created and charged for a
        task no one can look up: ``"resubmit"`` (the default) submits anew with a warning naming the
        possible second charge and when the earlier try began; ``"fail"`` raises
        :class:`~airflow_provider_qwen.exceptions.ApikleyOrphanedIntentError`, which says how to go on.
    :param output_path: a folder (``ObjectStoragePath`` or URI such as ``file:///data/edits`` or
        ``s3://bucket/edits``) to copy the results into as soon as the task succeeds, before the
        result URLs expire. Each is written atomically, named by ``result_name``, and the
        XCom value gains ``stored``: one ``{"uri", "source_url", "size", "content_type", "sha256"}``
        per result (the Apikley task id stays in ``apikley_task_id``). It is checked writable before
        the task is submitted.
    :param result_name: what the results are called in ``output_path`` (templated): a file name
        without extension, with the placeholders ``{source_stem}`` (the source image's file name
        without its extension, from ``image_url``; the Apikley task id when there is none),
        ``{index}`` (the map index of a mapped task, else 0) and ``{apikley_task_id}``. By default
        ``{source_stem}-{index}`` for a mapped task and ``{source_stem}`` otherwise, and, for a model
        whose input names no image, ``<apikley_task_id>-<n>`` as before. A task's one result is
        ``<name>.<ext>``, several are ``<name>-<n>.<ext>``. The name follows the file name rule of
        :mod:`~airflow_provider_qwen.names` (checked before submitting); a file of that name with
        other bytes (another edit's) is never replaced: the result goes to ``<name>-<apikley_task_id>``.
    :param min_credits: refuse to submit when the account has fewer credits than this (one extra
        request per task); ``None`` (the default) does not check, and Apikley refuses a task the
        account cannot pay for with :class:`~airflow_provider_qwen.exceptions.ApikleyInsufficientCreditsError`.
    :param max_credits: the credits one try of this task may commit to its edit: the edit is refused
        before it is paid for, with :class:`~airflow_provider_qwen.exceptions.ApikleyBudgetExceededError`,
        when its expected cost (what Apikley last charged for an edit of the model, as the run's
        ledger knows it, else :data:`~airflow_provider_qwen.budget.DEFAULT_EDIT_CREDITS`) is more.
        Checked in the task, with no server.
    :param run_max_credits: the credits the run's edits may spend together: every task of the run
        that sets it (typically once, in ``default_args``) and names the same ``run_budget_name``
        shares one budget, kept by the provider's ledger on the api-server (``[api] base_url``).
        Before paying, the edit reserves its expected cost there, and is refused with
        :class:`~airflow_provider_qwen.exceptions.ApikleyBudgetExceededError` when what the run spent,
        what its edits in flight reserved and this edit would exceed it; reservations are decided one
        at a time, so mapped edits started together never overshoot together. Once the edit ended,
        its reservation is settled with what Apikley charged (a failed edit too, when Apikley says).
        A ledger that cannot be reached, or that refuses, refuses the edit too (fails closed, with
        :class:`~airflow_provider_qwen.exceptions.ApikleyBudgetUnavailableError`). The task then ends
        on a worker, which settles.
    :param run_budget_name: which of the run's budgets ``run_max_credits`` is: tasks naming the same one share it.
    :param check_image_urls: before submitting, ask each image URL of the input (see
        :meth:`image_urls`) whether it answers (``HEAD``, or a one-byte ``GET`` where ``HEAD`` is
        refused; within 10 s, with the same host rules as result downloads), and refuse a dead one
        (an HTTP error, or no answer in time) with :class:`~airflow_provider_qwen.exceptions.ApikleyInputError`
        naming the field, the URL and its answer, before anything is paid for. URLs on Apikley's own
        hosts (what the hook's uploads return) are not asked. ``False`` skips the check, for image
        hosts Apikley reaches and the workers cannot.
    """

    template_fields: Sequence[str] = ("model", "input", "callback_url", "apikley_conn_id", "output_path", "result_name")
    template_fields_renderers = {"input": "json"}
    ui_color = "#e8def8"
    operator_extra_links = (ApikleyTaskLink(),)

    def __init__(
        self,
        *,
        model: str,
        input: dict[str, Any],
        input_schema: dict[str, Any] | str | os.PathLike | None = None,
        callback_url: str | None = None,
        apikley_conn_id: str = DEFAULT_CONN_ID,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float | None = None,
        timeout: float = 3600.0,
        output_path: str | ObjectStoragePath | None = None,
        resubmit_failed_task: bool = True,
        on_orphaned_intent: OrphanedIntentPolicy = "resubmit",
        max_consecutive_poll_errors: int = 10,
        expected_duration: float | None = None,
        end_in_triggerer: bool | None = None,
        min_credits: float | None = None,
        max_credits: float | None = None,
        run_max_credits: float | None = None,
        run_budget_name: str = DEFAULT_RUN_BUDGET,
        check_image_urls: bool = True,
        result_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.input = input
        self.input_schema = input_schema
        self.callback_url = callback_url
        self.apikley_conn_id = apikley_conn_id
        self.max_consecutive_poll_errors = max_consecutive_poll_errors
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.output_path = output_path
        self.resubmit_failed_task = resubmit_failed_task
        self.on_orphaned_intent = check_orphaned_intent_policy(on_orphaned_intent)
        self.expected_duration = expected_duration
        self.end_in_triggerer = end_in_triggerer
        self.min_credits = min_credits
        self.max_credits = max_credits
        self.run_max_credits = run_max_credits
        self.run_budget_name = run_budget_name
        self.check_image_urls = check_image_urls
        self.result_name = result_name
        self._result: dict[str, Any] | None = None
        if end_in_triggerer and (reasons := self._work_for_a_worker()):
            raise ApikleyInputError(
                "end_in_triggerer=True: a task that ends in the triggerer cannot keep what these arguments "
                "promise; leave end_in_triggerer unset to end it where they are kept, or drop them: "
                + "; ".join(reasons)
            )

    @cached_property
    def hook(self) -> ApikleyHook:
        """The hook for ``apikley_conn_id``."""
        from airflow_provider_qwen.hooks.apikley import ApikleyHook  # HTTP clients: imported when the task runs

        return ApikleyHook(self.apikley_conn_id)

    def task_model(self) -> str:
        """
        Return the model to run, from the (rendered) ``model``.

        :raises ApikleyInputError: when it is not shaped like a model name.
        """
        return check_model(self.model)

    def task_input(self) -> dict[str, Any]:
        """
        Return the ``input`` to send, from the (rendered) arguments, checked.

        :raises ApikleyInputError: naming each field that breaks a rule, its value and the rule.
        """
        schema = load_input_schema(self.input_schema) if self.input_schema is not None else None
        return check_input(self.task_model(), self.input, schema)

    def execute(self, context: Context) -> dict[str, Any]:
        """Validate, submit (or resume the task an earlier try submitted), then wait."""
        setattr(self, PUSHED_ID_ATTRIBUTE, False)  # until an id exists: see ApikleyTaskLink
        model, request = self.task_model(), self.task_input()
        self._check_arguments()
        if self.output_path:  # a name that cannot be a file's fails now, for free
            self._results_named(context, request, "0" * 32)
        fingerprint = request_fingerprint(model, request, self.callback_url or None)
        state_store = context.get("task_state_store")
        saved = read_saved_task(state_store, RESUME_KEY) if may_have_run_before(context) else None
        takeover = take_over(saved, fingerprint, self.on_orphaned_intent, self.log, RESUME_KEY)
        replaced = takeover.replaced_apikley_task_id
        resumed = self._resumable_task(takeover)
        if resumed:
            known, submitted_at = resumed
            apikley_task_id = known.task_id
            self.log.info("Resuming Apikley task %s submitted by an earlier try for the same request", apikley_task_id)
        else:
            known = None
            self._check_before_paying(request)
            budget = self._run_budget(context)
            granted = reserve_edits(budget, self.max_credits, 0.0, 1, "0", self.log)
            if granted.limiting is not None:
                raise granted.limiting.refusal(granted.expected)
            # before the intent is saved: a try lost while it waits has begun no create
            CreatePace(self.hook, self.log).wait_for_slot()
            create = partial(self.hook.create_task, model, request, self.callback_url)
            try:
                apikley_task_id, submitted_at = create_recorded(
                    create, fingerprint, saved, saving_to(state_store, RESUME_KEY)
                )
            except Exception as err:
                if budget is not None and surely_not_created(err):
                    budget.settle([], self.log, part=f"{budget.try_number}.0")
                raise
            self.log.info("Created Apikley task %s", apikley_task_id)
        context["ti"].xcom_push(key=APIKLEY_TASK_ID_XCOM_KEY, value=apikley_task_id)
        setattr(self, PUSHED_ID_ATTRIBUTE, apikley_task_id)

        if not self.wait_for_completion:
            summary = task_summary(apikley_task_id, TaskState.WAITING.value, [], request)
            return self._finish(self._handed_on(with_replaced(summary, replaced), context))
        record = known if known is not None and known.state.is_terminal else None
        if record is None:
            wait = TaskWait(
                apikley_task_id,
                submitted_at=submitted_at,
                deadline=try_deadline(context, self.timeout, self.execution_timeout),
                poll_interval=self.poll_interval,
                max_consecutive_poll_errors=self.max_consecutive_poll_errors,
                expected_duration=self.expected_duration or 0.0,
                logger=self.log,
            )
            if self.deferrable:
                self._defer_to_trigger(wait, context, replaced, self._results_named(context, request, apikley_task_id))
            try:
                record = wait_until_done(self.hook, wait)
            except ApikleyError as err:
                raise _after_paying(err, apikley_task_id, state_store) from None
        self._settle(context, (record.task_id, record.credits_consumed, record.state is TaskState.SUCCESS))
        try:
            summary = with_replaced({**summary_from_record(record), "input": request}, replaced)
        except ApikleyTaskFailedError as err:
            raise self._logged_failure(err) from None
        name = self._results_named(context, request, apikley_task_id)
        return self._finish(self._copy_results(summary, state_store, name), context)

    def execute_complete(self, context: Context, event: ResumeEvent = None) -> dict[str, Any]:
        """Resume after the trigger: check its event, store the results, return them or fail."""
        if event == EventStatus.SUCCESS.value:
            # The trigger ended the task itself, and a runner that ignores that (``dag.test()``)
            # resumes it here: read the task again so the result is the same either way.
            ti = context["ti"]  # this map index's own id: without map_indexes Airflow may hand back every one's
            apikley_task_id = ti.xcom_pull(task_ids=ti.task_id, key=APIKLEY_TASK_ID_XCOM_KEY, map_indexes=ti.map_index)
            event = TaskEvent.ended(self.hook.get_task(apikley_task_id)).to_payload()
        state_store = context.get("task_state_store")
        parsed = TaskEvent.from_payload(event)
        setattr(self, PUSHED_ID_ATTRIBUTE, parsed.apikley_task_id)  # a fresh instance: the link's mark again
        if parsed.output_path and not isinstance(self.output_path, ObjectStoragePath):
            self.output_path = parsed.output_path  # as execute had it when it deferred
        if parsed.status in (EventStatus.SUCCESS, EventStatus.FAILED):
            succeeded = parsed.status is EventStatus.SUCCESS
            self._settle(context, (parsed.apikley_task_id, parsed.credits_consumed, succeeded))
        try:
            summary = parsed.summary(input=self.task_input())
        except ApikleyError as err:
            raise _after_paying(self._logged_failure(err), parsed.apikley_task_id, state_store) from None
        name = parsed.result_name or self._results_named(context, summary["input"], parsed.apikley_task_id)
        return self._finish(self._copy_results(summary, state_store, name), context)

    def get_openlineage_facets_on_complete(self, task_instance: RuntimeTaskInstanceProtocol) -> OperatorLineage | None:
        """
        Return lineage for OpenLineage, when it is installed.

        The source image goes in, the results (their copies in ``output_path`` when made) out, and
        the Apikley task id is the run's external query.
        """
        return edit_lineage(self._result) if self._result else None

    def _finish(self, result: dict[str, Any], context: Context | None = None) -> dict[str, Any]:
        self._result = result
        if result["state"] == TaskState.SUCCESS.value:
            self.log.info("%s", outcome_line(result))
            extra = outlet_extra(uris=result_uris(result), apikley_task_id=result["apikley_task_id"])
            add_outlet_extra(context, self.outlets, extra)
        return result

    def _logged_failure(self, err: ApikleyError) -> ApikleyError:
        """Log a failed edit's line (with the credits charged for it, when Apikley said); return ``err``."""
        if isinstance(err, ApikleyTaskFailedError):
            self.log.error("%s", err)
        return err

    def _check_arguments(self) -> None:
        """Refuse, before any request, arguments that would fail (or lose results) only after paying."""
        check_callback_url(self.callback_url)
        check_credits("max_credits", self.max_credits)
        check_credits("run_max_credits", self.run_max_credits)
        if not isinstance(self.run_budget_name, str) or not 1 <= len(self.run_budget_name) <= 100:
            raise ApikleyInputError(f"run_budget_name={self.run_budget_name!r}: must be text of 1 to 100 characters")
        if self.result_name is not None:
            check_result_name(self.result_name)
        if self.min_credits is not None and (
            isinstance(self.min_credits, bool) or not isinstance(self.min_credits, (int, float)) or self.min_credits < 0
        ):
            raise ApikleyInputError(f"min_credits={self.min_credits!r}: must be a number of credits, 0 or more")
        if self.output_path and not self.wait_for_completion and not self.do_xcom_push:
            raise ApikleyInputError(
                f"output_path={str(self.output_path)!r}: with wait_for_completion=False the results are copied by "
                "the ApikleyTaskSensor given this task's XCom value, and do_xcom_push=False pushes none; "
                "give output_path to that sensor instead"
            )

    def image_urls(self, request: dict[str, Any]) -> dict[str, str]:
        """
        Return the image URLs ``request`` (the ``input`` to send) names, by the field that names each.

        See :func:`~airflow_provider_qwen.results.request_image_urls`; :attr:`check_image_urls` asks
        each before paying. A subclass for a model that names its images otherwise overrides this.
        """
        return request_image_urls(request)

    def _check_before_paying(self, request: dict[str, Any]) -> None:
        """Return what can only be checked by trying: the folder for the results, the image URLs, and the balance."""
        if self.output_path:
            check_writable(self.output_path)
        if self.check_image_urls and (urls := self.image_urls(request)):
            self.hook.check_image_urls(urls)
        if self.min_credits is not None:
            left = self.hook.get_credits()
            if left < self.min_credits:
                raise ApikleyInsufficientCreditsError(
                    f"min_credits={self.min_credits:g}: the account has {left:g} credits left, fewer than this "
                    "task requires; nothing was submitted"
                )

    def _run_budget(self, context: Context) -> RunBudget | None:
        """Return the run's budget this task shares, when ``run_max_credits`` is set."""
        if self.run_max_credits is None:
            return None
        return RunBudget(self.hook, context, self.run_max_credits, self.run_budget_name, self.task_model())

    def _settle(self, context: Context, ended: Ended) -> None:
        """Settle what the ended edit cost with the run's budget (every reservation of this task instance)."""
        if (budget := self._run_budget(context)) is not None:
            budget.settle([ended], self.log)

    def _handed_on(self, summary: dict[str, Any], context: Context) -> dict[str, Any]:
        """
        Return the value of a task that does not wait.

        ``output_path``, what the results are called there, and whether the task calls back to this
        deployment's receiver go with it to the sensor that waits.
        """
        if calls_back_to_receiver(self.callback_url, self.apikley_conn_id):
            summary["awaits_callback"] = True
        if self.output_path:
            summary["output_path"] = str(self.output_path)
            summary["result_name"] = self._results_named(context, summary["input"], summary["apikley_task_id"])
            self.log.info(
                "Not waiting: the ApikleyTaskSensor given this task's XCom value copies the results to %s",
                self.output_path,
            )
        return summary

    def _defer_to_trigger(
        self, wait: TaskWait, context: Context, replaced_apikley_task_id: str | None, result_name: str | None
    ) -> None:
        deadline = wait.deadline or time.time() + self.timeout
        self.defer(
            trigger=ApikleyTaskTrigger(
                apikley_task_id=wait.apikley_task_id,
                apikley_conn_id=self.apikley_conn_id,
                deadline=deadline,
                poll_interval=self.poll_interval,
                max_consecutive_poll_errors=self.max_consecutive_poll_errors,
                submitted_at=wait.submitted_at,
                model=self.task_model(),
                expected_duration=self.expected_duration,
                **self._how_to_end(context, replaced_apikley_task_id),
                output_path=str(self.output_path) if self.output_path else None,
                result_name=result_name if self.output_path else None,
                replaced_apikley_task_id=replaced_apikley_task_id,
                deferred_at=time.time(),
                awaits_callback=calls_back_to_receiver(self.callback_url, self.apikley_conn_id),
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=max(0.0, deadline - time.time())) + TRIGGER_GRACE,
        )

    def _ends_in_triggerer(self) -> bool:
        """Whether a success ends the task from the triggerer: only when a worker would add nothing."""
        if self.end_in_triggerer is False or self._work_for_a_worker():
            return False
        if lineage_expected(self):
            if self.end_in_triggerer:
                self.log.warning("OpenLineage is on for this task: it resumes on a worker, which emits its lineage")
            return False
        return True

    def _work_for_a_worker(self) -> list[str]:
        """
        Return what only a worker does when the task ends, as ``argument=value: why`` lines; empty when nothing.

        A task that ends in the triggerer is marked successful with its XCom value and extra link, and
        nothing else runs: no asset events for ``outlets`` (Airflow records them only from a worker),
        no ``post_execute``, no resume method, and the value is pushed as it is.
        """
        reasons = [
            f"{name}: overridden by {owner.__qualname__}, and a worker runs it when the task resumes"
            for name in RUN_AFTER_RESUMING
            if (owner := _user_override(type(self), name)) is not None
        ]
        if self.run_max_credits is not None:
            reasons.append(
                f"run_max_credits={self.run_max_credits!r}: a worker settles what the edit cost with the run's budget"
            )
        if self.outlets:
            reasons.append(f"outlets={self.outlets!r}: Airflow records asset events only when a worker ends a task")
        if self.on_success_callback:
            reasons.append("on_success_callback: runs in the task's process, on a worker")
        if compat.post_execute_hook(self) is not None:
            reasons.append("post_execute: runs in the task's process, on a worker")
        if self.multiple_outputs:
            reasons.append("multiple_outputs=True: a worker splits the value into XComs")
        if not self.do_xcom_push:
            reasons.append("do_xcom_push=False: the triggerer pushes the value a worker would not")
        if isinstance(self.output_path, ObjectStoragePath):
            # an ObjectStoragePath may carry a connection or options that the trigger's URI string would lose
            reasons.append(f"output_path={self.output_path!r}: an ObjectStoragePath is written from a worker")
        if any(type(link) is not ApikleyTaskLink for link in self.operator_extra_links):
            reasons.append("operator_extra_links: links other than ApikleyTaskLink are computed on a worker")
        return reasons

    def _how_to_end(self, context: Context, replaced_apikley_task_id: str | None) -> dict[str, bool]:
        """Return the trigger's ``end_task_on_success`` and ``maps_over_result``, as a worker would record the value."""
        # A runner that resumes a task the trigger ended rebuilds its value from Apikley, which knows
        # nothing of the task this try replaced: only a worker resumed with the event keeps it.
        if replaced_apikley_task_id or not self._ends_in_triggerer():
            return {"end_task_on_success": False, "maps_over_result": False}
        if getattr(context["ti"], "map_index", -1) not in (-1, None):
            return {"end_task_on_success": True, "maps_over_result": False}  # Airflow maps over unmapped tasks only
        maps_over = compat.maps_over_result(self)
        if maps_over is None:  # cannot tell: a worker records the length as it always does
            return {"end_task_on_success": False, "maps_over_result": False}
        return {"end_task_on_success": True, "maps_over_result": maps_over}

    def _resumable_task(self, takeover: Takeover) -> tuple[TaskRecord, float] | None:
        """Return the task to resume for this request, unless Apikley forgot it, or it failed and is submitted anew."""
        if takeover.resume is None:
            return None
        try:
            record = self.hook.get_task(takeover.resume)
        except ApikleyNotFoundError as err:
            # a 404 page from a proxy or gateway says nothing of the task: never pay again on its say-so
            if not err.from_envelope:
                raise
            self.log.warning("Apikley no longer knows task %s; submitting anew", takeover.resume)
            return None
        if record.state is TaskState.FAIL and self.resubmit_failed_task:
            self.log.warning("Apikley task %s failed in an earlier try; submitting anew", record.task_id)
            return None
        return record, takeover.submitted_at or time.time()

    def _results_named(self, context: Context, request: dict[str, Any], apikley_task_id: str) -> str | None:
        """Return what this edit's results are called in ``output_path`` (see :func:`~.results.result_name`)."""
        map_index = getattr(context["ti"], "map_index", None)
        return edit_result_name(self.result_name, self.image_urls(request).values(), map_index, apikley_task_id)

    def _copy_results(
        self, summary: dict[str, Any], state_store: compat.TaskStateStore | None, name: str | None
    ) -> dict[str, Any]:
        if not self.output_path or "stored" in summary:
            return summary
        try:
            return with_stored_results(self.hook, summary, self.output_path, name)
        except ApikleyError as err:
            raise _after_paying(err, summary["apikley_task_id"], state_store, copying=True) from None


def _user_override(cls: type, name: str) -> type | None:
    """
    Return the class that defines method ``name`` for ``cls``, when it is not the provider's or Airflow's.

    The provider's own subclasses (:class:`~airflow_provider_qwen.operators.qwen.QwenImageToImageOperator`)
    and the classes :class:`ApikleyCreateTaskOperator` inherits from (``BaseOperator``) are not overrides.
    """
    owner = next((klass for klass in cls.__mro__ if name in vars(klass)), None)
    if owner is None or issubclass(ApikleyCreateTaskOperator, owner):
        return None
    return None if owner.__module__.partition(".")[0] == __name__.partition(".")[0] else owner


def _after_paying(
    err: ApikleyError, apikley_task_id: str, state_store: compat.TaskStateStore | None, *, copying: bool = False
) -> ApikleyError:
    """``err``, raised after ``apikley_task_id`` was created and paid for, with what a retry will do."""
    if isinstance(err, ApikleyTaskFailedError):  # the generation failed: nothing to resume
        return err
    then = "copies its results again" if copying else "waits for it again"
    if state_store is not None:
        advice = (
            f"A retry or clear of this task resumes Apikley task {apikley_task_id} and {then}, without paying, "
            "as long as it sends the same request (model, input and callback URL)."
        )
    else:
        instead = "copy its results" if copying else "keep waiting for it"
        advice = (
            "This Airflow has no task state store, so a retry submits and pays for a new task: to "
            f"{instead} instead, give {apikley_task_id} to ApikleyTaskSensor"
            + (" with output_path." if copying else ".")
        )
    # a trigger's failure arrives as a message naming the error's class
    if isinstance(err, ApikleyConnectionError) or ApikleyConnectionError.__name__ in str(err):
        advice += " Apikley could not be reached: check the connection's host and proxies, and this machine's network."
    return err.with_advice(advice)
