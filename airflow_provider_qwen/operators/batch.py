"""A whole catalog of Qwen image-to-image edits in one task, submitted at the account's create rate."""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator, ObjectStoragePath

from airflow_provider_qwen.batch_ledger import (
    LEDGER_PAGE,
    BatchLedger,
    Ledger,
    LedgerEntry,
    PageLedger,
    RetryPlan,
    ended_outcomes,
    items_named,
    plan_retry,
    write_submitted_pages,
)
from airflow_provider_qwen.batch_manifest import SCHEMA_VERSION, BatchFolder, write_records
from airflow_provider_qwen.budget import DEFAULT_RUN_BUDGET, check_credits
from airflow_provider_qwen.callback_waits import calls_back_to_receiver
from airflow_provider_qwen.events import EventStatus, TaskEvent
from airflow_provider_qwen.exceptions import (
    ApikleyBudgetExceededError,
    ApikleyError,
    ApikleyInputError,
    ApikleyRateLimitError,
)
from airflow_provider_qwen.hooks import DEFAULT_CONN_ID
from airflow_provider_qwen.lineage import add_outlet_extra, outlet_extra, result_uris
from airflow_provider_qwen.models import QWEN_IMAGE_TO_IMAGE, QwenImageToImageInput
from airflow_provider_qwen.names import check_result_name
from airflow_provider_qwen.results import DistinctNames, result_name, store_results
from airflow_provider_qwen.resume import (
    OrphanedIntentPolicy,
    check_orphaned_intent_policy,
    may_have_run_before,
    orphaned_intents,
    request_fingerprint,
    surely_not_created,
    try_deadline,
)
from airflow_provider_qwen.run_budget import Ended, RunBudget, reserve_edits
from airflow_provider_qwen.storage import as_folder, check_writable, result_extension
from airflow_provider_qwen.triggers.apikley import TRIGGER_GRACE
from airflow_provider_qwen.triggers.batch import ApikleyBatchTrigger
from airflow_provider_qwen.validation import check_callback_url, is_task_id

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_qwen.hooks.apikley import ApikleyHook

__all__ = [
    "INLINE_RESULTS_LIMIT",
    "LEDGER_PAGE",
    "BatchLedger",
    "CreateRateLimiter",
    "QwenImageToImageBatchOperator",
    "Tally",
]

#: The state of an item whose outcome could not be read when the batch finished.
MISSING = "missing"
#: The state of an item never submitted, because it would have gone past a budget: nothing was paid for it.
UNSUBMITTED = "unsubmitted"
#: Every state an item of a large batch can end in, as its summary counts them (a budget takes a
#: large batch whole or not at all, so none of its items is left ``unsubmitted``).
OUTCOMES = (*(status.value for status in EventStatus), MISSING)
#: Batches of up to this many items return the per-item list in XCom and carry it in their trigger;
#: larger ones keep their items in a manifest under ``output_path`` and return a summary.
INLINE_RESULTS_LIMIT = 1000
#: Characters of a dag, run or task id kept readable in the name of a large batch's folder.
FOLDER_READABLE_CHARS = 100
#: Hex digits of the SHA-256 of a run id (or a dag or task id that had to be cleaned) in its folder's name.
FOLDER_HASH_CHARS = 16


class CreateRateLimiter:
    """
    At most ``creates`` task creations in any ``window`` seconds, as Apikley counts them.

    A creation is counted from when its answer arrived, which is after Apikley counted it, so the
    window seen here never starts before Apikley's own.

    :param creates: creations allowed per window (Apikley's default: 20).
    :param window: the window's length in seconds (Apikley's default: 10).
    :param clock: returns seconds; ``time.monotonic`` unless a test says otherwise.
    :param sleep: waits; ``time.sleep`` unless a test says otherwise.
    """

    def __init__(
        self,
        creates: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if creates < 1 or window <= 0:
            raise ApikleyInputError(f"creates_per_window={creates}, window_seconds={window}: must both be positive")
        self.creates = creates
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._recent: deque[float] = deque(maxlen=creates)
        self._not_before = 0.0

    def wait(self, count: int = 1) -> None:
        """Wait until ``count`` more creations (at most ``creates``) fit in the window."""
        leaving = len(self._recent) + min(max(count, 1), self.creates) - self.creates  # must leave the window first
        opens = self._not_before
        if leaving > 0:
            opens = max(opens, self._recent[leaving - 1] + self.window)
        now = self._clock()
        if opens > now:
            self._sleep(opens - now)

    def created(self) -> None:
        """Count a creation Apikley has just accepted."""
        self._recent.append(self._clock())

    def back_off(self, seconds: float) -> None:
        """Apikley refused a creation as too many: none until ``seconds`` from now."""
        self._not_before = self._clock() + seconds


class QwenImageToImageBatchOperator(BaseOperator):
    """
    Edit a whole catalog of images with Qwen's image-to-image model in one task.

    Every input is validated before anything is sent. The edits are then submitted at the account's
    create rate (``creates_per_window`` in any ``window_seconds``: a 429 slows the submission down
    and never drops an item). Each create is recorded as an intent before it is sent (a burst of
    creates at a time) and its task id as soon as it exists (see
    :mod:`~airflow_provider_qwen.batch_ledger`), so a retry pays once for each item, and a lost
    worker leaves at most the create it was sending unaccounted. One trigger then waits for all of
    them, asking about each about once, when its answer is due. The results are copied to
    ``output_path`` when given.

    A retry (or a clear) resumes an item's task from an earlier try only when the item's request is
    the same (model, input and ``callback_url``) and the task did not end ``failed``, ``timeout`` or
    ``error``; every other item is submitted anew, at the same create rate, and its result names the
    task it replaced. Each try waits ``timeout`` from its own start. The earlier tries are remembered
    in the task state store (Airflow 3.3+); without one (3.1, 3.2) a batch of more than
    :data:`INLINE_RESULTS_LIMIT` items remembers them in its ``submitted`` pages under
    ``output_path``, and a smaller batch remembers nothing: its retry submits and pays for every item
    again. A create that an earlier try began and saved no task id for (the worker died while it was
    sent) may have been paid for: ``on_orphaned_intent`` says what the retry does.

    Up to :data:`INLINE_RESULTS_LIMIT` items, it returns one dict per input, in input order:
    ``index``, ``apikley_task_id``, ``state`` (``success``, ``failed``, ``timeout`` or ``error``),
    ``result_urls``, ``credits_consumed``, and ``fail_code`` / ``fail_message`` / ``message`` when
    they apply, ``replaced_apikley_task_id`` when a retry submitted the item anew, ``stored`` with
    ``output_path``. A larger batch needs ``output_path``: its items are kept there as JSON Lines (see
    :mod:`~airflow_provider_qwen.batch_manifest`), never in the trigger's arguments, its event or
    XCom, and it returns a summary: ``schema_version``, ``items``, ``states`` (the count of each
    state, ``missing`` included, adding up to ``items``), ``credits_consumed`` and ``manifest``, the
    URI of one record per input (the dict above with its ``input`` and ``schema_version``), which
    :func:`~airflow_provider_qwen.batch_manifest.read_batch_manifest` streams. An item whose outcome
    could not be read back is ``missing``, and fails the task naming it (a retry waits for it again).
    A failed item does not stop the others; the task fails when more than ``max_failed_fraction`` of
    the items did not succeed, naming the first ten.

    With ``max_credits`` (this try's edits) or ``run_max_credits`` (the run's, shared with its
    other tasks; see :class:`~airflow_provider_qwen.operators.apikley.ApikleyCreateTaskOperator`),
    each burst of creates is reserved first, and the batch stops submitting at the first item that
    would go past a budget: it waits for the items it submitted, reports every other one as
    ``unsubmitted`` (``result_urls`` empty, no task id, nothing paid), then fails with
    :class:`~airflow_provider_qwen.exceptions.ApikleyBudgetExceededError` naming how many were left and
    the budget. A batch of more than :data:`INLINE_RESULTS_LIMIT` items is reserved whole: when the
    budget cannot take all of its items to submit, none is submitted. Once the batch ended, the run's
    budget is settled with what Apikley charged for each item.

    Mapped single edits (``QwenImageToImageOperator.partial(...).expand(...)``) stay the way to go for
    per-item retries and a task instance per edit in the UI; this operator is for catalogs of
    hundreds or thousands, where one task and one trigger cost far less than that many.

    :param inputs: one dict per edit with the fields of
        :class:`~airflow_provider_qwen.models.QwenImageToImageInput` (``prompt``, ``image_url``...).
    :param callback_url: where Apikley POSTs each task's details when it ends.
    :param apikley_conn_id: the Airflow connection to Apikley.
    :param creates_per_window: tasks the account may create per ``window_seconds`` (Apikley: 20 per 10 s).
    :param window_seconds: the length of the account's create-rate window.
    :param timeout: seconds to wait for the whole batch, from this try's start, or less when
        ``execution_timeout`` ends sooner; tasks still running then count as ``timeout``.
    :param expected_duration: seconds an edit is expected to take; by default learned by the triggerer.
    :param poll_interval: a fixed interval between queries of one task instead of Apikley's advised cadence.
    :param output_path: a folder (``ObjectStoragePath`` or URI) to copy each result into, named by
        ``result_name``.
    :param result_name: what each item's results are called in ``output_path`` (templated), as the
        single operator's ``result_name`` says, with ``{index}`` the item's index; by default
        ``{source_stem}-{index}``. Two items whose names come out the same get ``-2``, ``-3``... in
        input order, so no item's file is written over another's. Each record keeps its
        ``apikley_task_id``, and ``stored`` says where each result went.
    :param max_failed_fraction: the share of items (0 to 1) that may fail without failing the task.
    :param max_consecutive_poll_errors: failed status queries in a row that end one item's wait.
    :param on_orphaned_intent: what a retry does with an item whose create an earlier try began and
        saved no task id for: ``resubmit`` (the default) submits it again with a warning naming the
        items and the possible second charge; ``fail`` fails before creating anything.
    :param max_credits: the credits this try may commit to new edits, each expected to cost what
        Apikley last charged for one (as the run's ledger knows it), else
        :data:`~airflow_provider_qwen.budget.DEFAULT_EDIT_CREDITS`.
    :param run_max_credits: the credits the run's edits may spend together, kept by the ledger on the api-server.
    :param run_budget_name: which of the run's budgets ``run_max_credits`` is.
    :param check_image_urls: before creating anything, ask the ``image_url`` of every item to be
        submitted whether it answers (each distinct URL once, eight at a time, as the single
        operator's ``check_image_urls`` does), and refuse the whole batch when any is dead, naming
        the first ten such items, their URLs and answers (then how many more). ``False`` skips it.
    """

    template_fields: Sequence[str] = ("inputs", "callback_url", "apikley_conn_id", "output_path", "result_name")
    ui_color = "#e8def8"

    def __init__(
        self,
        *,
        inputs: list[dict[str, Any]],
        callback_url: str | None = None,
        apikley_conn_id: str = DEFAULT_CONN_ID,
        creates_per_window: int = 20,
        window_seconds: float = 10.0,
        timeout: float = 6 * 3600.0,
        expected_duration: float | None = None,
        poll_interval: float | None = None,
        output_path: str | ObjectStoragePath | None = None,
        max_failed_fraction: float = 0.0,
        max_consecutive_poll_errors: int = 10,
        on_orphaned_intent: OrphanedIntentPolicy = "resubmit",
        max_credits: float | None = None,
        run_max_credits: float | None = None,
        run_budget_name: str = DEFAULT_RUN_BUDGET,
        check_image_urls: bool = True,
        result_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.inputs = inputs
        self.callback_url = callback_url
        self.apikley_conn_id = apikley_conn_id
        self.creates_per_window = creates_per_window
        self.window_seconds = window_seconds
        self.timeout = timeout
        self.expected_duration = expected_duration
        self.poll_interval = poll_interval
        self.output_path = output_path
        self.max_failed_fraction = max_failed_fraction
        self.max_consecutive_poll_errors = max_consecutive_poll_errors
        self.on_orphaned_intent = on_orphaned_intent
        self.max_credits = max_credits
        self.run_max_credits = run_max_credits
        self.run_budget_name = run_budget_name
        self.check_image_urls = check_image_urls
        self.result_name = result_name

    @cached_property
    def hook(self) -> ApikleyHook:
        """The hook for ``apikley_conn_id``."""
        from airflow_provider_qwen.hooks.apikley import ApikleyHook  # HTTP clients: imported when the task runs

        return ApikleyHook(self.apikley_conn_id)

    def build_inputs(self) -> list[dict[str, Any]]:
        """
        Every item's validated ``input``.

        :raises ApikleyInputError: naming each item that breaks a rule, by index, with its fields, values and rules.
        """
        if not isinstance(self.inputs, list | tuple) or not self.inputs:
            raise ApikleyInputError(f"inputs={self.inputs!r}: must be a non-empty list of dicts")
        if not 0 <= self.max_failed_fraction <= 1:
            raise ApikleyInputError(f"max_failed_fraction={self.max_failed_fraction!r}: must be between 0 and 1")
        check_credits("max_credits", self.max_credits)
        check_credits("run_max_credits", self.run_max_credits)
        built, problems = [], []
        for index, item in enumerate(self.inputs):
            try:
                if not isinstance(item, dict):
                    raise ApikleyInputError(f"must be a dict of input fields, got {type(item).__name__}")
                built.append(QwenImageToImageInput.build(**item).to_api())
            except ApikleyInputError as err:
                problems.append(f"inputs[{index}]: {err}")
        if problems:
            raise ApikleyInputError("\n".join(problems))
        return built

    def execute(self, context: Context) -> None:
        """Validate every item, resume what earlier tries left running, submit the rest, then wait in one trigger."""
        requests = self.build_inputs()
        count = len(requests)
        check_callback_url(self.callback_url)
        if self.result_name is not None:
            check_result_name(self.result_name)
        if self.output_path:  # a name that cannot be a file's fails now, for free
            for index, request in enumerate(requests):
                self._name(DistinctNames(), index, request, "0" * 32)
        policy = check_orphaned_intent_policy(self.on_orphaned_intent)
        deadline = try_deadline(context, self.timeout, self.execution_timeout)
        folder = self._batch_folder(context) if count > INLINE_RESULTS_LIMIT else None
        generation = _generation(context)
        store = context.get("task_state_store")
        ledger: Ledger = (
            PageLedger(folder, generation, count) if folder and store is None else BatchLedger(store, generation, count)
        )
        fingerprints = [request_fingerprint(QWEN_IMAGE_TO_IMAGE, request, self.callback_url) for request in requests]
        plan = self._plan(context, ledger, folder, fingerprints, policy)
        if self.output_path and plan.submit:
            check_writable(self.output_path)
        if self.check_image_urls and plan.submit:
            self.hook.check_image_urls(
                {f"inputs[{index}].image_url": requests[index]["image_url"] for index in plan.submit}
            )
        budget = self._run_budget(context)
        if folder and plan.submit:
            self._reserve_whole(budget, len(plan.submit))
        entries = plan.entries
        unsent = {index: requests[index] for index in plan.submit}
        del requests  # each request is let go as it is sent (_submit_burst): 100,000 hold about 20 MB
        unsubmitted, over_budget = self._submit_all(plan, unsent, fingerprints, entries, ledger, budget, not folder)
        left = set(unsubmitted)
        waited = [index for index in range(count) if index in entries and index not in left]
        if unsubmitted and not waited:
            raise ApikleyBudgetExceededError(over_budget)
        if folder:  # every page again, with this try's generation: the trigger waits for these, and no earlier ones
            write_submitted_pages(folder, generation, count, entries)
            tasks: dict[str, Any] = {"tasks": [], "folder": folder.uri, "count": count}
        else:
            tasks = {"tasks": [_trigger_task(entries[index]) for index in waited]}
            if unsubmitted:
                self.log.warning("%s", over_budget)
                tasks.update(unsubmitted=unsubmitted, over_budget=over_budget)
        self.defer(
            trigger=ApikleyBatchTrigger(
                **tasks,
                apikley_conn_id=self.apikley_conn_id,
                deadline=deadline,
                model=QWEN_IMAGE_TO_IMAGE,
                expected_duration=self.expected_duration,
                poll_interval=self.poll_interval,
                max_consecutive_poll_errors=self.max_consecutive_poll_errors,
                generation=generation if folder else None,
                deferred_at=time.time(),
                awaits_callback=calls_back_to_receiver(self.callback_url, self.apikley_conn_id),
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=max(0.0, deadline - time.time())) + TRIGGER_GRACE,
        )

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """Check the trigger's event, copy the results, return them (or their summary), or fail past the threshold."""
        if isinstance(event, dict) and event.get("status") == "done" and "folder" in event:
            return self._complete_from_folder(context, event)
        if not isinstance(event, dict) or event.get("status") != "done" or not isinstance(event.get("tasks"), list):
            raise ApikleyError(f"Expected the event of an Apikley batch trigger, got {str(event)[:200]!r}")
        unsubmitted = _unsubmitted(event, len(self.inputs))
        waited = [index for index in range(len(self.inputs)) if index not in unsubmitted]
        if len(event["tasks"]) != len(waited):
            left = f" ({len(unsubmitted)} more left unsubmitted)" if unsubmitted else ""
            raise ApikleyError(f"The batch trigger reported {len(event['tasks'])} tasks for {len(waited)} inputs{left}")
        outcomes = {
            index: (TaskEvent.from_payload(payload), _replaced(payload))
            for index, payload in zip(waited, event["tasks"], strict=True)
        }
        ended = {index: (outcome.apikley_task_id, outcome.status.value) for index, (outcome, _) in outcomes.items()}
        BatchLedger(context.get("task_state_store"), _generation(context)).settle(len(self.inputs), ended)
        self._settle(context, [_ended(outcome) for outcome, _ in outcomes.values()])
        names = DistinctNames()
        results = [
            self._result(index, *outcomes[index], names) if index in outcomes else self._unsubmitted(index, names)
            for index in range(len(self.inputs))
        ]
        tally = Tally()
        for result in results:
            tally.add(result)
        self._check_failures(tally)
        if unsubmitted:
            raise ApikleyBudgetExceededError(
                f"{len(unsubmitted)} of {len(self.inputs)} items were left unsubmitted, nothing paid for them "
                f"({items_named(sorted(unsubmitted))}); the {len(waited)} submitted have ended. "
                f"{event.get('over_budget') or ''}"
            )
        uris = [
            uri for result in results if result["state"] == EventStatus.SUCCESS.value for uri in result_uris(result)
        ]
        add_outlet_extra(context, self.outlets, outlet_extra(uris=uris))
        return results

    def _name(self, names: DistinctNames, index: int, item: dict[str, Any], apikley_task_id: str) -> str | None:
        """Return what item ``index``'s results are called, claimed from ``names`` (see ``result_name``)."""
        image_url = item.get("image_url")
        named = result_name(self.result_name, image_url=image_url, index=index, apikley_task_id=apikley_task_id)
        return names.claim(named)

    def _plan(
        self,
        context: Context,
        ledger: Ledger,
        folder: BatchFolder | None,
        fingerprints: list[str],
        policy: OrphanedIntentPolicy,
    ) -> RetryPlan:
        """Decide what this try takes over from earlier ones (a first try, nothing), and say so."""
        if not may_have_run_before(context):
            return plan_retry({}, fingerprints)
        earlier = ledger.load(len(fingerprints))
        outcomes = ended_outcomes(folder, len(fingerprints), self.log) if folder and earlier else None
        plan = plan_retry(earlier, fingerprints, outcomes)
        if plan.orphaned:
            orphaned_intents(policy, items_named(plan.orphaned), self.log)
        if plan.resumed:
            self.log.info("Resuming %d Apikley tasks an earlier try submitted", len(plan.resumed))
        if plan.changed:
            self.log.info(
                "Submitting anew %d items whose request changed since an earlier try: %s",
                len(plan.changed),
                items_named(plan.changed),
            )
        if plan.ended_badly:
            self.log.info(
                "Submitting anew %d items whose earlier task failed, timed out or errored: %s",
                len(plan.ended_badly),
                items_named(plan.ended_badly),
            )
        return plan

    def _submit_all(
        self,
        plan: RetryPlan,
        unsent: dict[int, dict[str, Any]],
        fingerprints: list[str],
        entries: dict[int, LedgerEntry],
        ledger: Ledger,
        budget: RunBudget | None,
        per_burst: bool,
    ) -> tuple[list[int], str]:
        """
        Submit ``plan.submit`` in bursts the create rate allows at once, into ``entries``.

        Each request is taken out of ``unsent`` as it is sent. Each burst costs one save of the
        ledger, before its first create: its intents, and the task ids of the burst before it,
        which were noted as they came (see :meth:`_submit_burst`); the last burst's task ids are
        saved once it ends (a lost worker leaves them noted, where a retry's load finds them).
        With ``per_burst`` and a budget, each burst is reserved first, and the submission stops at
        the first item that does not fit.

        :return: the items left unsubmitted, and the budget's refusal that left them.
        """
        limiter = CreateRateLimiter(self.creates_per_window, self.window_seconds)
        pending = plan.submit
        committed = 0.0
        budgeted = per_burst and (budget is not None or self.max_credits is not None)
        noted: list[int] = []  # the last burst's items, whose task ids the ledger has only noted
        for start in range(0, len(pending), self.creates_per_window):
            burst = pending[start : start + self.creates_per_window]
            if budgeted:
                granted = reserve_edits(budget, self.max_credits, committed, len(burst), str(start), self.log)
                committed += granted.count * granted.expected
                if granted.limiting is not None:
                    left = pending[start + granted.count :]
                    noted = self._submit_burst(
                        burst[: granted.count], noted, plan, unsent, fingerprints, entries, ledger, limiter
                    )
                    ledger.save(noted, entries)
                    submitted = f"{start + granted.count} of {len(pending)} items were submitted"
                    return sorted(left), str(granted.limiting.refusal(granted.expected, submitted))
            noted = self._submit_burst(burst, noted, plan, unsent, fingerprints, entries, ledger, limiter)
            done = start + len(burst)
            if done // 50 > start // 50 or done == len(pending):
                self.log.info("Submitted %d of %d edits", done, len(pending))
        ledger.save(noted, entries)
        return [], ""

    def _submit_burst(
        self,
        burst: list[int],
        noted: list[int],
        plan: RetryPlan,
        unsent: dict[int, dict[str, Any]],
        fingerprints: list[str],
        entries: dict[int, LedgerEntry],
        ledger: Ledger,
        limiter: CreateRateLimiter,
    ) -> list[int]:
        """
        Submit one burst: its intents saved before the first create, with the task ids of ``noted``.

        Each task id is noted in the ledger as soon as it exists (a slot per create of the burst,
        which the next burst's save frees), so a worker lost during a burst leaves at most one
        create that a retry cannot tell was answered (``on_orphaned_intent``). A create that raised
        keeps its intent unless Apikley surely created nothing.

        :return: the items whose task ids are only noted, for the next save.
        """
        if not burst:
            return noted
        # each create waits for its own place in the window (_submit): waiting here for the whole
        # burst to fit would add the burst's own duration to every window
        before = {index: entries.get(index) for index in burst}
        intended_at = round(time.time(), 3)  # the ledger keeps milliseconds
        for index in burst:
            entries[index] = LedgerEntry(None, intended_at, fingerprints[index], plan.replaced.get(index))
        ledger.save([*noted, *burst], entries)
        created = 0
        try:
            for index in burst:
                task_id = self._submit(unsent.pop(index), limiter)
                entries[index] = replace(entries[index], apikley_task_id=task_id, submitted_at=round(time.time(), 3))
                ledger.note_created(created, index, entries[index])
                created += 1
        except BaseException as err:
            for index in burst[created + (0 if surely_not_created(err) else 1) :]:
                if (earlier := before[index]) is None:
                    entries.pop(index)
                else:
                    entries[index] = earlier
            ledger.save([*noted, *burst], entries)  # as the intents were: their keys are rewritten in place
            raise
        return burst

    def _batch_folder(self, context: Context) -> BatchFolder:
        """
        Where a large batch keeps its items: a folder per task instance under ``output_path``.

        ``_apikley_batch/<dag_id>/<run_id>-<hash>/<task_id>``, then ``<map_index>`` for a mapped
        task, each name as :func:`_folder_name` writes it, so two task instances never share a folder.
        """
        if not self.output_path:
            raise ApikleyInputError(
                f"inputs has {len(self.inputs)} items: a batch of more than {INLINE_RESULTS_LIMIT} keeps its "
                "per-item records under output_path, which must be set; checked before submitting, so nothing "
                "was spent"
            )
        ti = context["ti"]
        mapped = ti.map_index is not None and ti.map_index >= 0
        names = [_folder_name(ti.dag_id), _folder_name(ti.run_id, always_hashed=True), _folder_name(ti.task_id)]
        return BatchFolder(
            as_folder(self.output_path).joinpath("_apikley_batch", *names, *([str(ti.map_index)] if mapped else []))
        )

    def _complete_from_folder(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Stream a large batch's ended pages into its manifest, copying results; return the summary."""
        folder = self._batch_folder(context)
        count = len(self.inputs)
        generation = _generation(context)
        if event.get("folder") != folder.uri or event.get("count") != count or event.get("generation") != generation:
            raise ApikleyError(f"The batch trigger's event is not this try's batch: {str(event)[:200]!r}")
        tally = Tally()
        charged: list[Ended | None] = []
        names = DistinctNames()

        def records() -> Iterator[dict[str, Any]]:
            for page in folder.pages(count):
                ended = folder.read_ended(page, count, generation, self.log)
                if ended is None:
                    self.log.warning("No outcome of items %s in %s", items_named(folder.items(page, count)), folder)
                    outcomes: Iterator[dict[str, Any]] = (
                        {"index": index, "state": MISSING, "message": f"No outcome in {folder.ended(page)}"}
                        for index in folder.items(page, count)
                    )
                else:
                    events = [(payload, TaskEvent.from_payload(payload)) for payload in ended]
                    charged.extend(_ended(event) for _, event in events)
                    outcomes = (
                        self._result(payload["index"], event, _replaced(payload), names)
                        for payload, event in sorted(events, key=lambda pair: pair[0]["index"])
                    )
                for result in outcomes:
                    tally.add(result)
                    yield {"schema_version": SCHEMA_VERSION, **result, "input": self.inputs[result["index"]]}

        write_records(folder.manifest, records())
        self.log.info("Wrote the manifest of %d items to %s", count, folder.manifest)
        self._settle(context, charged)
        where = f"; every item is in {folder.manifest}"
        if tally.missing:
            raise ApikleyError(
                f"{len(tally.missing)} of {count} items have no outcome: {items_named(tally.missing)}{where}. "
                "A retry waits for them again, without paying for them again"
            )
        self._check_failures(tally, where)
        add_outlet_extra(context, self.outlets, outlet_extra(manifest_uri=str(folder.manifest)))
        return {
            "schema_version": SCHEMA_VERSION,
            "items": tally.items,
            "states": {state: tally.states[state] for state in OUTCOMES},
            "credits_consumed": tally.credits,
            "manifest": str(folder.manifest),
        }

    def _run_budget(self, context: Context) -> RunBudget | None:
        """Return the run's budget this task shares, when ``run_max_credits`` is set."""
        if self.run_max_credits is None:
            return None
        return RunBudget(self.hook, context, self.run_max_credits, self.run_budget_name, QWEN_IMAGE_TO_IMAGE)

    def _reserve_whole(self, budget: RunBudget | None, count: int) -> None:
        """
        Reserve all ``count`` items of a large batch at once, or refuse the batch before anything is submitted.

        :raises ApikleyBudgetExceededError: when a budget cannot take them all.
        """
        if budget is None and self.max_credits is None:
            return
        granted = reserve_edits(budget, self.max_credits, 0.0, count, "all", self.log)
        if granted.limiting is None:
            return
        if budget is not None:
            budget.settle([], self.log, part=f"{budget.try_number}.all")
        raise granted.limiting.refusal(
            granted.expected,
            f"a batch of more than {INLINE_RESULTS_LIMIT} items is submitted whole or not at all under a budget, "
            f"and only {granted.count} of its {count} items would fit: none was submitted",
        )

    def _settle(self, context: Context, ended: Sequence[Ended | None]) -> None:
        """Settle what the batch's ended edits cost with the run's budget, closing every reservation of the task."""
        if (budget := self._run_budget(context)) is not None:
            budget.settle([item for item in ended if item is not None], self.log)

    def _check_failures(self, tally: Tally, where: str = "") -> None:
        failed = tally.items - tally.states[EventStatus.SUCCESS.value] - tally.states[UNSUBMITTED]
        charged = f"; the {failed} that did not succeed were charged {tally.failed_credits:g} credits" if failed else ""
        self.log.info("%d of %d edits succeeded%s", tally.states[EventStatus.SUCCESS.value], tally.items, charged)
        if failed > self.max_failed_fraction * tally.items:
            more = f" (and {failed - len(tally.first_failures)} more)" if failed > len(tally.first_failures) else ""
            raise ApikleyError(
                f"{failed} of {tally.items} edits did not succeed, more than max_failed_fraction="
                f"{self.max_failed_fraction:g} allows{charged}: {'; '.join(tally.first_failures)}{more}{where}"
            )

    def _submit(self, request: dict[str, Any], limiter: CreateRateLimiter) -> str:
        """Create one task at the allowed rate; a 429 waits and tries the same item again."""
        while True:
            limiter.wait()
            try:
                task_id = self.hook.create_task(QWEN_IMAGE_TO_IMAGE, request, self.callback_url)
            except ApikleyRateLimitError as err:
                wait = getattr(err, "retry_after", None) or self.window_seconds / self.creates_per_window
                self.log.warning("Apikley refused a create as too many (%s); slowing down for %.1f s", err, wait)
                limiter.back_off(wait)
                continue
            limiter.created()
            return task_id

    def _unsubmitted(self, index: int, names: DistinctNames) -> dict[str, Any]:
        """Return the result of an item a budget left unsubmitted, claiming its name as a submitted item would."""
        if self.output_path:  # so a retry that submits it names every item as this try did
            self._name(names, index, self.inputs[index], "0" * 32)
        return _unsubmitted_result(index)

    def _result(self, index: int, outcome: TaskEvent, replaced: str | None, names: DistinctNames) -> dict[str, Any]:
        result: dict[str, Any] = {"index": index, **outcome.to_payload(), "state": outcome.status.value}
        result.pop("status")
        result.setdefault("result_urls", [])
        result.setdefault("credits_consumed", None)
        if replaced:
            result["replaced_apikley_task_id"] = replaced
        # every item claims its name, whatever its state, so the names do not depend on which items failed
        name = self._name(names, index, self.inputs[index], outcome.apikley_task_id) if self.output_path else None
        if self.output_path and outcome.status is EventStatus.SUCCESS:
            extension = result_extension(self.inputs[index])
            try:
                stored = store_results(
                    self.hook, outcome.apikley_task_id, outcome.result_urls, self.output_path, extension, name
                )
                result["stored"] = [item.to_dict() for item in stored]
            except ApikleyError as err:  # the others are still stored
                result.update(state=EventStatus.ERROR.value, message=f"Could not store the result: {err}")
        return result


class Tally:
    """What a batch's results add up to, counted as they stream by."""

    def __init__(self) -> None:
        self.items = 0
        self.states: Counter[str] = Counter()
        self.credits = 0.0
        self.failed_credits = 0.0
        self.first_failures: list[str] = []
        self.missing: list[int] = []

    def add(self, result: dict[str, Any]) -> None:
        """Count one item's result."""
        self.items += 1
        self.states[result["state"]] += 1
        self.credits += result.get("credits_consumed") or 0.0
        if result["state"] != EventStatus.SUCCESS.value:
            self.failed_credits += result.get("credits_consumed") or 0.0
        if result["state"] == MISSING:
            self.missing.append(result["index"])
        elif result["state"] not in (EventStatus.SUCCESS.value, UNSUBMITTED) and len(self.first_failures) < 10:
            self.first_failures.append(_failure_line(result))


def _generation(context: Context) -> int:
    """Return the generation of what this try writes: its try number (1 for a context that has none)."""
    try_number = getattr(context["ti"], "try_number", None)
    return try_number if type(try_number) is int else 1


def _ended(outcome: TaskEvent) -> Ended | None:
    """Return an edit Apikley ended, as the run's budget settles it; ``None`` for a wait that ended otherwise."""
    if outcome.status not in (EventStatus.SUCCESS, EventStatus.FAILED):
        return None  # timed out or errored: it may still run, and its reservation stays in flight
    return (outcome.apikley_task_id, outcome.credits_consumed, outcome.status is EventStatus.SUCCESS)


def _unsubmitted(event: dict[str, Any], count: int) -> set[int]:
    """
    Return the items a small batch's event says its budget left unsubmitted.

    :raises ApikleyError: when they are not indexes of the batch's items.
    """
    unsubmitted = event.get("unsubmitted") or []
    if not isinstance(unsubmitted, list) or not all(type(index) is int and 0 <= index < count for index in unsubmitted):
        raise ApikleyError(f"unsubmitted={str(unsubmitted)[:200]!r} in the batch trigger's event are not item indexes")
    return set(unsubmitted)


def _unsubmitted_result(index: int) -> dict[str, Any]:
    """Return the result of an item a budget left unsubmitted: no task, nothing paid."""
    return {
        "index": index,
        "apikley_task_id": None,
        "state": UNSUBMITTED,
        "result_urls": [],
        "credits_consumed": None,
        "message": "not submitted: it would have gone past a budget",
    }


def _trigger_task(entry: LedgerEntry) -> list[str | float]:
    """Return an item as the trigger's ``tasks`` carry it."""
    task: list[str | float] = [str(entry.apikley_task_id), entry.submitted_at]
    return [*task, entry.replaced_apikley_task_id] if entry.replaced_apikley_task_id else task


def _replaced(payload: dict[str, Any]) -> str | None:
    """Return the task an item's outcome says it replaced."""
    replaced = payload.get("replaced_apikley_task_id")
    if replaced is not None and not is_task_id(replaced):
        raise ApikleyError(f"replaced_apikley_task_id={replaced!r} in the batch trigger's event is not a task id")
    return replaced


def _folder_name(name: object, *, always_hashed: bool = False) -> str:
    """
    ``name`` as one folder name, readable and never another name's.

    Every character but letters, digits, ``.``, ``_`` and ``-`` becomes ``_`` and leading dots go
    (run ids hold ``:`` and ``+``, and none may climb out with ``..``), at most
    :data:`FOLDER_READABLE_CHARS` kept. That loses what told names apart (Airflow accepts both
    ``manual__2026-01-01T00:00:00+00:00`` and ``manual__2026-01-01T00_00_00_00_00``), so a name
    cleaning changed, and every run id (which whoever triggers a run chooses), gets ``-`` and
    :data:`FOLDER_HASH_CHARS` hex digits of the SHA-256 of the name as it was.
    """
    raw = str(name)
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", raw).lstrip(".")[:FOLDER_READABLE_CHARS] or "_"
    if readable == raw and not always_hashed:
        return readable
    return f"{readable}-{hashlib.sha256(raw.encode()).hexdigest()[:FOLDER_HASH_CHARS]}"


def _failure_line(result: dict[str, Any]) -> str:
    detail = result.get("fail_message") or result.get("message") or ""
    code = f" {result['fail_code']}" if result.get("fail_code") else ""
    credits = result.get("credits_consumed")
    charged = f" ({credits:g} credits charged)" if credits is not None else ""
    line = f"inputs[{result['index']}] (Apikley task {result['apikley_task_id']}) {result['state']}{code}{charged}"
    return f"{line}: {detail}"
