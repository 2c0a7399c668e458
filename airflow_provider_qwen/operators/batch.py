"""A whole catalog of Qwen image-to-image edits in one task, submitted at the account's create rate."""

from __future__ import annotations

import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator, ObjectStoragePath

from airflow_provider_qwen.batch_manifest import PAGE_ITEMS, BatchFolder, read_records, write_records
from airflow_provider_qwen.events import EventStatus, TaskEvent
from airflow_provider_qwen.exceptions import ApikleyError, ApikleyInputError, ApikleyRateLimitError
from airflow_provider_qwen.hooks import DEFAULT_CONN_ID
from airflow_provider_qwen.models import QWEN_IMAGE_TO_IMAGE, QwenImageToImageInput
from airflow_provider_qwen.results import store_results
from airflow_provider_qwen.resume import may_have_run_before
from airflow_provider_qwen.storage import as_folder, check_writable, result_extension
from airflow_provider_qwen.triggers.apikley import TRIGGER_GRACE
from airflow_provider_qwen.triggers.batch import ApikleyBatchTrigger
from airflow_provider_qwen.validation import check_callback_url

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_qwen._compat import TaskStateStore
    from airflow_provider_qwen.hooks.apikley import ApikleyHook

#: Submitted tasks are remembered in pages of this many, each under ``apikley_batch/<page>``.
LEDGER_PAGE = 100
#: Batches of up to this many items return the per-item list in XCom and carry it in their trigger;
#: larger ones keep their items in a manifest under ``output_path`` and return a summary.
INLINE_RESULTS_LIMIT = 1000


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

    def wait(self) -> None:
        """Wait until one more creation fits in the window."""
        opens = self._not_before
        if len(self._recent) == self.creates:
            opens = max(opens, self._recent[0] + self.window)
        now = self._clock()
        if opens > now:
            self._sleep(opens - now)

    def created(self) -> None:
        """Count a creation Apikley has just accepted."""
        self._recent.append(self._clock())

    def back_off(self, seconds: float) -> None:
        """Apikley refused a creation as too many: none until ``seconds`` from now."""
        self._not_before = self._clock() + seconds


class BatchLedger:
    """
    The Apikley task of each item submitted so far, kept in the task state store across tries.

    Without a task state store (Airflow before 3.3) it remembers nothing, and a retry submits every item anew.
    """

    def __init__(self, state_store: TaskStateStore | None) -> None:
        self.state_store = state_store

    def load(self) -> dict[int, tuple[str, float]]:
        """Every item an earlier try submitted: index -> (Apikley task id, submitted at)."""
        submitted: dict[int, tuple[str, float]] = {}
        page = 0
        while self.state_store is not None and (entries := self.state_store.get(f"apikley_batch/{page}")):
            submitted.update({int(index): (task_id, float(at)) for index, (task_id, at) in entries.items()})
            page += 1
        return submitted

    def record(self, index: int, submitted: dict[int, tuple[str, float]]) -> None:
        """Save the page holding ``index`` (items never move between pages, so a page is written whole)."""
        if self.state_store is None:
            return
        page = index // LEDGER_PAGE
        entries = {
            str(item): list(submitted[item])
            for item in range(page * LEDGER_PAGE, (page + 1) * LEDGER_PAGE)
            if item in submitted
        }
        self.state_store.set(f"apikley_batch/{page}", entries)


class QwenImageToImageBatchOperator(BaseOperator):
    """
    Edit a whole catalog of images with Qwen's image-to-image model in one task.

    Every input is validated before anything is sent. The edits are then submitted at the account's
    create rate (``creates_per_window`` in any ``window_seconds``: a 429 slows the submission down
    and never drops an item), and each task id is saved in the task state store as soon as it
    exists, so a retry resumes the batch without paying twice for any item (Airflow 3.3+). One
    trigger then waits for all of them, asking about each about once, when its answer is due. The
    results are copied to ``output_path`` when given.

    Up to :data:`INLINE_RESULTS_LIMIT` items, it returns one dict per input, in input order:
    ``index``, ``apikley_task_id``, ``state`` (``success``, ``failed``, ``timeout`` or ``error``),
    ``result_urls``, ``credits_consumed``, and ``fail_code`` / ``fail_message`` / ``message`` when
    they apply, ``stored`` with ``output_path``. A larger batch needs ``output_path``: its items are
    kept there as JSON Lines (see :mod:`~airflow_provider_qwen.batch_manifest`), never in the
    trigger's arguments, its event or XCom, and it returns a summary: ``items``, ``states`` (count
    by state), ``credits_consumed`` and ``manifest``, the URI of one record per input (the dict
    above with its ``input``), which :func:`~airflow_provider_qwen.batch_manifest.read_batch_manifest`
    streams. A failed item does not stop the others; the task fails when more than
    ``max_failed_fraction`` of the items did not succeed, naming the first ten.

    Mapped single edits (``QwenImageToImageOperator.partial(...).expand(...)``) stay the way to go for
    per-item retries and a task instance per edit in the UI; this operator is for catalogs of
    hundreds or thousands, where one task and one trigger cost far less than that many.

    :param inputs: one dict per edit with the fields of
        :class:`~airflow_provider_qwen.models.QwenImageToImageInput` (``prompt``, ``image_url``...).
    :param callback_url: where Apikley POSTs each task's details when it ends.
    :param apikley_conn_id: the Airflow connection to Apikley.
    :param creates_per_window: tasks the account may create per ``window_seconds`` (Apikley: 20 per 10 s).
    :param window_seconds: the length of the account's create-rate window.
    :param timeout: seconds to wait for the whole batch, from the first submit; tasks still running
        then count as ``timeout``.
    :param expected_duration: seconds an edit is expected to take; by default learned by the triggerer.
    :param poll_interval: a fixed interval between queries of one task instead of Apikley's advised cadence.
    :param output_path: a folder (``ObjectStoragePath`` or URI) to copy each result into, as
        ``<apikley_task_id>-<n>.<ext>``.
    :param max_failed_fraction: the share of items (0 to 1) that may fail without failing the task.
    :param max_consecutive_poll_errors: failed status queries in a row that end one item's wait.
    """

    template_fields: Sequence[str] = ("inputs", "callback_url", "apikley_conn_id", "output_path")
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
        """Validate every item, submit those no earlier try submitted, then wait for all in one trigger."""
        requests = self.build_inputs()
        check_callback_url(self.callback_url)
        folder = self._batch_folder(context) if len(requests) > INLINE_RESULTS_LIMIT else None
        ledger = BatchLedger(context.get("task_state_store"))
        submitted = ledger.load() if may_have_run_before(context) else {}
        if self.output_path and len(submitted) < len(requests):
            check_writable(self.output_path)
        if submitted:
            self.log.info("Resuming %d Apikley tasks an earlier try submitted", len(submitted))
        limiter = CreateRateLimiter(self.creates_per_window, self.window_seconds)
        for index, request in enumerate(requests):
            if index not in submitted:
                submitted[index] = (self._submit(request, limiter), time.time())
                ledger.record(index, submitted)
                if len(submitted) % 50 == 0 or len(submitted) == len(requests):
                    self.log.info("Submitted %d of %d edits", len(submitted), len(requests))
            if folder and (index % PAGE_ITEMS == PAGE_ITEMS - 1 or index == len(requests) - 1):
                _write_submitted_page(folder, index // PAGE_ITEMS, submitted)
        deadline = min(at for _, at in submitted.values()) + self.timeout
        if folder:
            tasks: dict[str, Any] = {"tasks": [], "folder": folder.uri, "count": len(requests)}
        else:
            tasks = {"tasks": [list(submitted[index]) for index in range(len(requests))]}
        self.defer(
            trigger=ApikleyBatchTrigger(
                **tasks,
                apikley_conn_id=self.apikley_conn_id,
                deadline=deadline,
                model=QWEN_IMAGE_TO_IMAGE,
                expected_duration=self.expected_duration,
                poll_interval=self.poll_interval,
                max_consecutive_poll_errors=self.max_consecutive_poll_errors,
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
        if len(event["tasks"]) != len(self.inputs):
            raise ApikleyError(f"The batch trigger reported {len(event['tasks'])} tasks for {len(self.inputs)} inputs")
        outcomes = [TaskEvent.from_payload(payload) for payload in event["tasks"]]
        results = [self._result(index, outcome) for index, outcome in enumerate(outcomes)]
        tally = Tally()
        for result in results:
            tally.add(result)
        self._check_failures(tally)
        return results

    def _batch_folder(self, context: Context) -> BatchFolder:
        """Where a large batch keeps its items: under ``output_path``, a folder per task instance."""
        if not self.output_path:
            raise ApikleyInputError(
                f"inputs has {len(self.inputs)} items: a batch of more than {INLINE_RESULTS_LIMIT} keeps its "
                "per-item records under output_path, which must be set; checked before submitting, so nothing "
                "was spent"
            )
        ti = context["ti"]
        mapped = ti.map_index is not None and ti.map_index >= 0
        names = [ti.dag_id, ti.run_id, ti.task_id] + ([str(ti.map_index)] if mapped else [])
        return BatchFolder(as_folder(self.output_path).joinpath("_apikley_batch", *map(_safe_name, names)))

    def _complete_from_folder(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Stream a large batch's ended pages into its manifest, copying results; return the summary."""
        folder = self._batch_folder(context)
        if event.get("folder") != folder.uri or event.get("count") != len(self.inputs):
            raise ApikleyError(f"The batch trigger's event is not this batch's: {str(event)[:200]!r}")
        tally = Tally()

        def records() -> Iterator[dict[str, Any]]:
            for page in folder.pages(len(self.inputs)):
                for payload in read_records(folder.ended(page)):
                    index = payload.pop("index")
                    result = self._result(index, TaskEvent.from_payload(payload))
                    tally.add(result)
                    yield {**result, "input": self.inputs[index]}

        write_records(folder.manifest, records())
        self.log.info("Wrote the manifest of %d items to %s", len(self.inputs), folder.manifest)
        self._check_failures(tally, f"; every item is in {folder.manifest}")
        return {
            "items": tally.items,
            "states": dict(tally.states),
            "credits_consumed": tally.credits,
            "manifest": str(folder.manifest),
        }

    def _check_failures(self, tally: Tally, where: str = "") -> None:
        failed = tally.items - tally.states[EventStatus.SUCCESS.value]
        self.log.info("%d of %d edits succeeded", tally.items - failed, tally.items)
        if failed > self.max_failed_fraction * tally.items:
            more = f" (and {failed - len(tally.first_failures)} more)" if failed > len(tally.first_failures) else ""
            raise ApikleyError(
                f"{failed} of {tally.items} edits did not succeed, more than max_failed_fraction="
                f"{self.max_failed_fraction:g} allows: {'; '.join(tally.first_failures)}{more}{where}"
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

    def _result(self, index: int, outcome: TaskEvent) -> dict[str, Any]:
        result: dict[str, Any] = {"index": index, **outcome.to_payload(), "state": outcome.status.value}
        result.pop("status")
        result.setdefault("result_urls", [])
        result.setdefault("credits_consumed", None)
        if self.output_path and outcome.status is EventStatus.SUCCESS:
            extension = result_extension(self.inputs[index])
            try:
                stored = store_results(
                    self.hook, outcome.apikley_task_id, outcome.result_urls, self.output_path, extension
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
        self.first_failures: list[str] = []

    def add(self, result: dict[str, Any]) -> None:
        """Count one item's result."""
        self.items += 1
        self.states[result["state"]] += 1
        self.credits += result.get("credits_consumed") or 0.0
        if result["state"] != EventStatus.SUCCESS.value and len(self.first_failures) < 10:
            self.first_failures.append(_failure_line(result))


def _write_submitted_page(folder: BatchFolder, page: int, submitted: dict[int, tuple[str, float]]) -> None:
    items = range(page * PAGE_ITEMS, (page + 1) * PAGE_ITEMS)
    write_records(
        folder.submitted(page),
        (
            {"index": index, "apikley_task_id": submitted[index][0], "submitted_at": submitted[index][1]}
            for index in items
            if index in submitted
        ),
    )


def _safe_name(name: object) -> str:
    """``name`` as one folder name: run ids hold ``:`` and ``+``, and none may climb out with ``..``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(name)).lstrip(".") or "_"


def _failure_line(result: dict[str, Any]) -> str:
    detail = result.get("fail_message") or result.get("message") or ""
    code = f" {result['fail_code']}" if result.get("fail_code") else ""
    return f"inputs[{result['index']}] (Apikley task {result['apikley_task_id']}) {result['state']}{code}: {detail}"
