"""A whole catalog of Qwen image-to-image edits in one task, submitted at the account's create rate."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator, ObjectStoragePath

from airflow_provider_qwen.events import EventStatus, TaskEvent
from airflow_provider_qwen.exceptions import ApikleyError, ApikleyInputError, ApikleyRateLimitError
from airflow_provider_qwen.hooks import DEFAULT_CONN_ID
from airflow_provider_qwen.models import QWEN_IMAGE_TO_IMAGE, QwenImageToImageInput, check_callback_url
from airflow_provider_qwen.storage import check_writable, result_extension
from airflow_provider_qwen.triggers.apikley import TRIGGER_GRACE
from airflow_provider_qwen.triggers.batch import ApikleyBatchTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_qwen.hooks.apikley import ApikleyHook

#: Submitted tasks are remembered in pages of this many, each under ``apikley_batch/<page>``.
LEDGER_PAGE = 100


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

    def __init__(self, creates: int, window: float, clock: Any = time.monotonic, sleep: Any = time.sleep) -> None:
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

    def __init__(self, state_store: Any) -> None:
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

    Returns one dict per input, in input order: ``index``, ``apikley_task_id``, ``state``
    (``success``, ``failed``, ``timeout`` or ``error``), ``result_urls``, and ``fail_code`` /
    ``fail_message`` / ``message`` when they apply, ``stored`` with ``output_path``. A failed item does
    not stop the others; the task fails when more than ``max_failed_fraction`` of the items did not
    succeed, naming them.

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
        ledger = BatchLedger(context.get("task_state_store"))
        submitted = ledger.load()
        if self.output_path and len(submitted) < len(requests):
            check_writable(self.output_path)
        if submitted:
            self.log.info("Resuming %d Apikley tasks an earlier try submitted", len(submitted))
        limiter = CreateRateLimiter(self.creates_per_window, self.window_seconds)
        for index, request in enumerate(requests):
            if index in submitted:
                continue
            submitted[index] = (self._submit(request, limiter), time.time())
            ledger.record(index, submitted)
            if len(submitted) % 50 == 0 or len(submitted) == len(requests):
                self.log.info("Submitted %d of %d edits", len(submitted), len(requests))
        deadline = min(at for _, at in submitted.values()) + self.timeout
        self.defer(
            trigger=ApikleyBatchTrigger(
                tasks=[list(submitted[index]) for index in range(len(requests))],
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

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Check the trigger's event, copy the results, return them in input order, or fail past the threshold."""
        if not isinstance(event, dict) or event.get("status") != "done" or not isinstance(event.get("tasks"), list):
            raise ApikleyError(f"Expected the event of an Apikley batch trigger, got {str(event)[:200]!r}")
        if len(event["tasks"]) != len(self.inputs):
            raise ApikleyError(f"The batch trigger reported {len(event['tasks'])} tasks for {len(self.inputs)} inputs")
        outcomes = [TaskEvent.from_payload(payload) for payload in event["tasks"]]
        results = [self._result(index, outcome) for index, outcome in enumerate(outcomes)]
        failed = [result for result in results if result["state"] != EventStatus.SUCCESS.value]
        self.log.info("%d of %d edits succeeded", len(results) - len(failed), len(results))
        if len(failed) > self.max_failed_fraction * len(results):
            shown = "; ".join(_failure_line(result) for result in failed[:10])
            more = f" (and {len(failed) - 10} more)" if len(failed) > 10 else ""
            raise ApikleyError(
                f"{len(failed)} of {len(results)} edits did not succeed, more than max_failed_fraction="
                f"{self.max_failed_fraction:g} allows: {shown}{more}"
            )
        return results

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
                stored = self.hook.store_results(
                    outcome.apikley_task_id, outcome.result_urls, self.output_path, extension
                )
                result["stored"] = [item.to_dict() for item in stored]
            except ApikleyError as err:  # the others are still stored
                result.update(state=EventStatus.ERROR.value, message=f"Could not store the result: {err}")
        return result


def _failure_line(result: dict[str, Any]) -> str:
    detail = result.get("fail_message") or result.get("message") or ""
    code = f" {result['fail_code']}" if result.get("fail_code") else ""
    return f"inputs[{result['index']}] (Apikley task {result['apikley_task_id']}) {result['state']}{code}: {detail}"
