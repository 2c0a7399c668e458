"""Waiting for many Apikley tasks in one trigger: a batch's edits, each asked about when its answer is due."""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_qwen import waits
from airflow_provider_qwen.batch_manifest import BatchFolder, read_page, write_records
from airflow_provider_qwen.callback_waits import (
    DeliveryWatch,
    delivered_or_slept,
    delivered_record,
    delivery_watch,
    slow_fallback,
)
from airflow_provider_qwen.events import EventStatus, TaskEvent
from airflow_provider_qwen.exceptions import ApikleyError
from airflow_provider_qwen.hooks import DEFAULT_CONN_ID
from airflow_provider_qwen.redaction import without_credentials
from airflow_provider_qwen.threads import in_thread
from airflow_provider_qwen.triggers.apikley import settle_before_resuming
from airflow_provider_qwen.validation import is_task_id
from airflow_provider_qwen.waits import Done, TaskWait, TimedOut, aquery, wait_settings

if TYPE_CHECKING:
    from airflow_provider_qwen.hooks.apikley import ApikleyHook
    from airflow_provider_qwen.models import TaskRecord

#: Status queries one batch trigger keeps in flight at once.
CONCURRENT_QUERIES = 16


class ApikleyBatchTrigger(BaseTrigger):
    """
    Poll every task of a batch until each has ended or the deadline passes, then fire one event.

    Each task is asked about first when its answer is due (its submit time plus the expected
    duration), then at Apikley's advised cadence, and never again once it has ended, so a batch
    costs about one status query per edit. Like :class:`~.apikley.ApikleyTaskTrigger` it only reads,
    and its arguments are JSON primitives.

    A small batch's tasks travel in its arguments, and its event is ``{"status": "done", "tasks":
    [...]}``: one :class:`~airflow_provider_qwen.events.TaskEvent` payload per task, in the order
    given, with ``replaced_apikley_task_id`` where the task replaced an earlier try's. A large batch's
    stay in ``folder`` (see :mod:`~airflow_provider_qwen.batch_manifest`), so its arguments and its
    event keep the same size whatever the number of items: it waits for one page of items at a time,
    writes each page's outcomes there as it ends, tagged with its ``generation`` (a restarted trigger
    resumes after the last page this generation wrote; an earlier try's pages are waited for again),
    and fires ``{"status": "done", "folder": ..., "count": N, "generation": G, "states": {...}}``.

    :param tasks: ``[apikley_task_id, submitted_at]`` pairs, one per edit, with the replaced task's
        id as a third element where there is one; empty with ``folder``.
    :param apikley_conn_id: the Airflow connection to Apikley.
    :param deadline: epoch seconds after which the tasks still running end with ``timeout``.
    :param model: the tasks' model, whose usual duration sets each first query.
    :param expected_duration: seconds a task is expected to take; ``None`` uses what was learned.
    :param poll_interval: a fixed interval (varied by 10%) instead of Apikley's advised cadence.
    :param max_consecutive_poll_errors: failed queries in a row that end one task's wait with ``error``.
    :param folder: the URI of a large batch's folder, whose ``submitted`` pages list its tasks.
    :param count: how many items the batch in ``folder`` has.
    :param generation: the try number of the try that wrote ``folder``'s ``submitted`` pages; only
        ``ended`` pages of the same generation count as done.
    :param deferred_at: epoch seconds when the operator deferred, from which the settle delay before
        resuming its worker is counted (``[apikley] resume_settle_seconds``).
    :param unsubmitted: the indexes of a small batch's items its budget left unsubmitted, which
        ``tasks`` leaves out; handed back in the event, with ``over_budget``, the budget's refusal.
    :param over_budget: why those items were left unsubmitted.
    :param awaits_callback: the tasks call back to this deployment's receiver: each wait ends on its
        callback, and Apikley is asked only every ``[apikley] callback_fallback_seconds`` (see
        :mod:`~airflow_provider_qwen.callback_waits`).
    """

    def __init__(
        self,
        tasks: list[list[Any]],
        apikley_conn_id: str = DEFAULT_CONN_ID,
        deadline: float | None = None,
        model: str | None = None,
        expected_duration: float | None = None,
        poll_interval: float | None = None,
        max_consecutive_poll_errors: int = 10,
        folder: str | None = None,
        count: int = 0,
        generation: int | None = None,
        deferred_at: float | None = None,
        unsubmitted: list[int] | None = None,
        over_budget: str | None = None,
        awaits_callback: bool = False,
    ) -> None:
        super().__init__()
        self.tasks: list[list[str | float]] = [
            [str(task_id), float(submitted_at), *(str(id_) for id_ in replaced[:1] if id_)]
            for task_id, submitted_at, *replaced in tasks
        ]
        self.apikley_conn_id = apikley_conn_id
        self.deadline = deadline
        self.model = model
        self.expected_duration = expected_duration
        self.poll_interval = poll_interval
        self.max_consecutive_poll_errors = max_consecutive_poll_errors
        self.folder = folder
        self.count = count
        self.generation = generation
        self.deferred_at = deferred_at
        self.unsubmitted = [int(index) for index in unsubmitted or []]
        self.over_budget = over_budget
        self.awaits_callback = awaits_callback

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the trigger's class path and its arguments (JSON primitives only)."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "tasks": self.tasks,
                "apikley_conn_id": self.apikley_conn_id,
                "deadline": self.deadline,
                "model": self.model,
                "expected_duration": self.expected_duration,
                "poll_interval": self.poll_interval,
                "max_consecutive_poll_errors": self.max_consecutive_poll_errors,
                "folder": self.folder,
                "count": self.count,
                "generation": self.generation,
                "deferred_at": self.deferred_at,
                "unsubmitted": self.unsubmitted,
                "over_budget": self.over_budget,
                "awaits_callback": self.awaits_callback,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until every task has ended or timed out; yield exactly one event."""
        from airflow_provider_qwen.hooks.apikley import ApikleyHook  # HTTP clients: imported in the triggerer only

        hook = ApikleyHook(self.apikley_conn_id)
        try:
            if self.folder:
                payload, last_submit = await self._wait_for_pages(hook, BatchFolder(self.folder))
            else:
                payload = {"status": "done", "tasks": await self._outcomes(hook, self.tasks)}
                if self.unsubmitted:
                    payload.update(unsubmitted=self.unsubmitted, over_budget=self.over_budget)
                last_submit = max((float(at) for _, at, *_ in self.tasks), default=0.0)
        finally:
            await hook.aclose()
        # the batch resumes a worker, and races alike; a trigger from before deferred_at counts from its last submit
        await settle_before_resuming(self, deferred_at=self.deferred_at or last_submit)
        yield TriggerEvent(payload)

    async def _wait_for_pages(self, hook: ApikleyHook, folder: BatchFolder) -> tuple[dict[str, Any], float]:
        """Wait for a large batch a page at a time; write each page's outcomes; return the event and last submit."""
        states: Counter[str] = Counter()
        last_submit = 0.0
        for page in folder.pages(self.count):
            ended = await in_thread(folder.read_ended, page, self.count, self.generation, self.log)
            if ended is None:  # not waited for by this generation yet, or by a triggerer that stopped before its end
                submitted = await in_thread(self._submitted_page, folder, page)
                tasks = [
                    [item["apikley_task_id"], item["submitted_at"], item.get("replaced_apikley_task_id")]
                    for item in submitted
                ]
                ended = [
                    {"index": item["index"], "generation": self.generation, **outcome}
                    for item, outcome in zip(submitted, await self._outcomes(hook, tasks), strict=True)
                ]
                await in_thread(write_records, folder.ended(page), ended)
                last_submit = max(last_submit, *(float(item["submitted_at"]) for item in submitted))
            states.update(str(item["status"]) for item in ended)
        self.log.info("All %d Apikley tasks of the batch have ended: %s", self.count, dict(states))
        event = {"status": "done", "folder": folder.uri, "count": self.count, "generation": self.generation}
        return {**event, "states": dict(states)}, last_submit

    def _submitted_page(self, folder: BatchFolder, page: int) -> list[dict[str, Any]]:
        """
        Return the records of page ``page`` as submitted.

        :raises ApikleyError: naming the page, when it is missing, holds an intent, or is another try's.
        """
        path = folder.submitted(page)
        records = read_page(path)
        if records is None:
            raise ApikleyError(f"The batch's page {path} is missing")
        for record in records:
            if self.generation is not None and record.get("generation") != self.generation:
                raise ApikleyError(
                    f"The batch's page {path} was written by try {record.get('generation')}, not by try "
                    f"{self.generation} that this trigger waits for: a later try has taken the batch over"
                )
            known = type(record.get("index")) is int and isinstance(record.get("submitted_at"), int | float)
            if not known or not is_task_id(record.get("apikley_task_id")):
                raise ApikleyError(f"The batch's page {path} holds an item with no task to wait for: {record!r}")
        return records

    async def _outcomes(self, hook: ApikleyHook, tasks: list[list[Any]]) -> list[dict[str, Any]]:
        """Wait for ``tasks`` (as in :attr:`tasks`); return each one's event payload, naming the task it replaced."""
        events = await self._wait_for_all(hook, tasks)
        return [
            {**event.to_payload(), **({"replaced_apikley_task_id": replaced[0]} if replaced and replaced[0] else {})}
            for event, (_, _, *replaced) in zip(events, tasks, strict=True)
        ]

    async def _wait_for_all(self, hook: ApikleyHook, tasks: list[list[Any]]) -> list[TaskEvent]:
        settings = wait_settings(self)
        task_waits = [TaskWait(str(task_id), submitted_at=float(at), **settings) for task_id, at, *_ in tasks]
        watch = delivery_watch(self.apikley_conn_id) if self.awaits_callback else None
        delivered = (
            {index: watch.subscribe(wait.apikley_task_id) for index, wait in enumerate(task_waits)} if watch else {}
        )
        now = time.time()
        due = [
            (now + slow_fallback(wait.first_query_delay(now), watch, self.deadline, now), index)
            for index, wait in enumerate(task_waits)
        ]
        heapq.heapify(due)
        events: dict[int, TaskEvent] = {}
        limit = asyncio.Semaphore(CONCURRENT_QUERIES)
        polling = False
        try:
            while len(events) < len(task_waits):
                while due[0][1] in events:  # ended on its callback
                    heapq.heappop(due)
                await delivered_or_slept(max(0.0, due[0][0] - time.time()), delivered.values(), watch)
                self._take_deliveries(delivered, events)
                if watch is not None and not watch.healthy and not polling:
                    # the api-server cannot be asked: every wait is due now, then at its usual cadence
                    polling, due = True, [(min(at, time.time()), index) for at, index in due]
                    heapq.heapify(due)
                elif watch is not None and watch.healthy:
                    polling = False
                batch = []
                while due and due[0][0] <= time.time():
                    if (index := heapq.heappop(due)[1]) not in events:
                        batch.append(index)
                if batch:
                    await self._query_due(hook, task_waits, batch, events, due, limit, watch)
        finally:
            if watch is not None:
                for index, future in delivered.items():
                    watch.unsubscribe(task_waits[index].apikley_task_id, future)
        self.log.info("All %d Apikley tasks have ended", len(task_waits))
        return [events[index] for index in range(len(task_waits))]

    def _take_deliveries(self, delivered: dict[int, asyncio.Future[TaskRecord]], events: dict[int, TaskEvent]) -> None:
        """Turn the tasks whose callbacks were delivered into their events."""
        for index in [index for index, future in delivered.items() if future.done()]:
            record = delivered_record(delivered.pop(index))
            if record is not None and index not in events:
                waits.EXPECTED_DURATIONS.note(self.apikley_conn_id, record)
                events[index] = TaskEvent.ended(record)

    async def _query_due(
        self,
        hook: ApikleyHook,
        task_waits: list[TaskWait],
        batch: list[int],
        events: dict[int, TaskEvent],
        due: list[tuple[float, int]],
        limit: asyncio.Semaphore,
        watch: DeliveryWatch | None,
    ) -> None:
        """Query the tasks of ``batch`` whose answers are due; note those that ended, schedule the others."""
        outcomes = await asyncio.gather(*(self._query(hook, task_waits[index], limit) for index in batch))
        # from this batch's ended edits
        learned = waits.EXPECTED_DURATIONS.expected(self.apikley_conn_id, self.model)
        for index, outcome in zip(batch, outcomes, strict=True):
            wait = task_waits[index]
            if index in events:  # its callback came while it was being asked about
                continue
            try:
                step = wait.after(outcome, now := time.time())
            except Exception as err:
                events[index] = TaskEvent(EventStatus.ERROR, wait.apikley_task_id, message=_describe(err))
                continue
            if isinstance(step, Done):
                waits.EXPECTED_DURATIONS.note(self.apikley_conn_id, step.record)
                events[index] = TaskEvent.ended(step.record)
            elif isinstance(step, TimedOut):
                events[index] = TaskEvent(EventStatus.TIMEOUT, wait.apikley_task_id, message=step.message)
            else:
                heapq.heappush(due, (now + slow_fallback(step.seconds, watch, self.deadline, now), index))
                if self.expected_duration is None and learned > wait.expected_duration:
                    wait.expected_duration = learned

    @staticmethod
    async def _query(hook: ApikleyHook, wait: TaskWait, limit: asyncio.Semaphore) -> TaskRecord | ApikleyError:
        async with limit:
            return await aquery(hook, wait.apikley_task_id)


def _describe(err: BaseException) -> str:
    return without_credentials(f"{type(err).__name__}: {err}")
