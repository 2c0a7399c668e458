"""
What a batch's earlier tries submitted, so that a retry pays once for each item and reports its latest task.

Each item's entry holds its Apikley task id, when it was submitted, the
:func:`~airflow_provider_qwen.resume.request_fingerprint` of what was sent, the task it replaced,
and, once known, how the wait for it ended; each page of entries carries the generation (the try
number) of the try that wrote it. Before a burst of creates the batch saves an intent for each of
the burst's items (an entry with no task id yet), and after the burst their task ids: two writes per
burst of up to ``creates_per_window`` items, where a write per item was the cost before intents.

On Airflow 3.3 the entries live in the task state store (:class:`BatchLedger`, pages of
:data:`LEDGER_PAGE` items under ``apikley_batch/<page>``). Without one (3.1, 3.2), a large batch
keeps them in its own ``submitted`` pages (:class:`PageLedger`, see
:mod:`~airflow_provider_qwen.batch_manifest`), and a small batch keeps none: its retry submits every
item anew.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_qwen.batch_manifest import BatchFolder, read_page, write_records
from airflow_provider_qwen.events import EventStatus
from airflow_provider_qwen.exceptions import ApikleyError, ApikleyUnreadableStateError
from airflow_provider_qwen.validation import is_task_id

if TYPE_CHECKING:
    from airflow_provider_qwen._compat import TaskStateStore
    from airflow_provider_qwen.hooks.retries import Log

#: Entries per page of the task state store's ledger, each page under ``apikley_batch/<page>``.
LEDGER_PAGE = 100
#: How an item's wait ended that makes a retry submit it anew.
RESUBMITTED_STATES = frozenset({EventStatus.FAILED.value, EventStatus.TIMEOUT.value, EventStatus.ERROR.value})
#: How many items a message names before it says how many more there are.
NAMED_ITEMS = 10


@dataclass(frozen=True)
class LedgerEntry:
    """
    One item as a try left it.

    :param apikley_task_id: its Apikley task; ``None`` for an intent, a create begun and not yet answered.
    :param submitted_at: epoch seconds when the create was sent (for an intent, when it was about to be).
    :param fingerprint: the request fingerprint of what was, or was to be, sent.
    :param replaced_apikley_task_id: the task of an earlier try that this one replaced.
    :param state: how the wait for the task ended (``success``, ``failed``...), once a try knew.
    """

    apikley_task_id: str | None
    submitted_at: float
    fingerprint: str
    replaced_apikley_task_id: str | None = None
    state: str | None = None

    def to_record(self, generation: int) -> dict[str, Any]:
        """Return the entry as JSON primitives, as the try of ``generation`` writes it."""
        record: dict[str, Any] = {
            "apikley_task_id": self.apikley_task_id,
            "submitted_at": self.submitted_at,
            "fingerprint": self.fingerprint,
            "generation": generation,
        }
        if self.replaced_apikley_task_id:
            record["replaced_apikley_task_id"] = self.replaced_apikley_task_id
        if self.state:
            record["state"] = self.state
        return record

    @classmethod
    def from_record(cls, record: object) -> LedgerEntry:
        """
        Read an entry :meth:`to_record` wrote.

        :raises ValueError: saying what is wrong with it.
        """
        if not isinstance(record, dict):
            raise ValueError(f"an entry must be an object, got {record!r}")
        task_id = record.get("apikley_task_id")
        replaced = record.get("replaced_apikley_task_id")
        submitted_at = record.get("submitted_at")
        if task_id is not None and not is_task_id(task_id):
            raise ValueError(f"apikley_task_id={task_id!r} is not an Apikley task id")
        if replaced is not None and not is_task_id(replaced):
            raise ValueError(f"replaced_apikley_task_id={replaced!r} is not an Apikley task id")
        if isinstance(submitted_at, bool) or not isinstance(submitted_at, int | float):
            raise ValueError(f"submitted_at={submitted_at!r} is not epoch seconds")
        if not isinstance(record.get("fingerprint"), str):
            raise ValueError(f"fingerprint={record.get('fingerprint')!r} is not a request fingerprint")
        if type(record.get("generation")) is not int:
            raise ValueError(f"generation={record.get('generation')!r} is not a try number")
        if record.get("state") is not None and record["state"] not in {status.value for status in EventStatus}:
            raise ValueError(f"state={record['state']!r} is not how a wait ends")
        return cls(task_id, float(submitted_at), record["fingerprint"], replaced, record.get("state"))


class Ledger(Protocol):
    """Where a batch keeps its entries across tries."""

    def load(self, count: int) -> dict[int, LedgerEntry]:
        """Return the entries of a batch of ``count`` items that earlier tries saved, by index."""

    def save(self, indexes: Iterable[int], entries: Mapping[int, LedgerEntry]) -> None:
        """Save the pages holding ``indexes``, each whole, from ``entries``."""


class BatchLedger:
    """
    A batch's entries in Airflow 3.3's task state store, in pages of :data:`LEDGER_PAGE` items.

    Without a task state store it remembers nothing, and a retry submits every item anew.

    :param state_store: ``context["task_state_store"]``, or ``None``.
    :param generation: the try number of the try that writes.
    """

    def __init__(self, state_store: TaskStateStore | None, generation: int = 1) -> None:
        self.state_store = state_store
        self.generation = generation

    def load(self, count: int) -> dict[int, LedgerEntry]:
        """
        Return the entries of a batch of ``count`` items that earlier tries saved, by index.

        :raises ApikleyUnreadableStateError: naming the page, when one cannot be read as entries.
        """
        entries: dict[int, LedgerEntry] = {}
        if self.state_store is None:
            return entries
        for page in range((count + LEDGER_PAGE - 1) // LEDGER_PAGE):
            key = f"apikley_batch/{page}"
            saved = self.state_store.get(key)
            if saved is None:
                continue
            try:
                if not isinstance(saved, dict):
                    raise ValueError(f"a page must be an object of entries by index, got {type(saved).__name__}")
                for index, record in saved.items():
                    if not str(index).isdigit() or int(index) // LEDGER_PAGE != page:
                        raise ValueError(f"index {index!r} does not belong on this page")
                    entries[int(index)] = LedgerEntry.from_record(record)
            except ValueError as err:
                raise ApikleyUnreadableStateError(
                    f"The batch's ledger page {key} in the task state store cannot be read: {err}. This try "
                    "submitted nothing; without the page, its items would be submitted and paid for again"
                ) from None
        return entries

    def save(self, indexes: Iterable[int], entries: Mapping[int, LedgerEntry]) -> None:
        """Save the pages holding ``indexes``, each whole, from ``entries`` (items never move between pages)."""
        if self.state_store is None:
            return
        for page in sorted({index // LEDGER_PAGE for index in indexes}):
            on_page = range(page * LEDGER_PAGE, (page + 1) * LEDGER_PAGE)
            self.state_store.set(
                f"apikley_batch/{page}",
                {str(index): entries[index].to_record(self.generation) for index in on_page if index in entries},
            )

    def settle(self, count: int, outcomes: Mapping[int, tuple[str, str]]) -> None:
        """
        Note how each item's wait ended, so that a retry submits anew only those that did not succeed.

        :param outcomes: index -> (Apikley task id, the wait's status); an item whose entry names
            another task is left alone.
        """
        if self.state_store is None:
            return
        entries = self.load(count)
        settled = [
            index
            for index, (task_id, state) in outcomes.items()
            if index in entries and entries[index].apikley_task_id == task_id
        ]
        for index in settled:
            entries[index] = replace(entries[index], state=outcomes[index][1])
        self.save(settled, entries)


class PageLedger:
    """
    A large batch's entries in its own ``submitted`` pages, where there is no task state store.

    :param folder: the batch's folder.
    :param generation: the try number of the try that writes.
    """

    def __init__(self, folder: BatchFolder, generation: int = 1) -> None:
        self.folder = folder
        self.generation = generation

    def load(self, count: int) -> dict[int, LedgerEntry]:
        """
        Return the entries of a batch of ``count`` items that earlier tries saved, by index.

        :raises ApikleyError: naming the page, when one cannot be read as entries.
        """
        entries: dict[int, LedgerEntry] = {}
        for page in self.folder.pages(count):
            path = self.folder.submitted(page)
            for record in read_page(path) or []:
                try:
                    index = record.get("index")
                    if type(index) is not int or self.folder.page_of(index) != page:
                        raise ValueError(f"index {index!r} does not belong on this page")
                    entries[index] = LedgerEntry.from_record(record)
                except ValueError as err:
                    raise ApikleyError(
                        f"The batch page {path} cannot be read: {err}. This try submitted nothing; without "
                        "the page, its items would be submitted and paid for again"
                    ) from None
        return entries

    def save(self, indexes: Iterable[int], entries: Mapping[int, LedgerEntry]) -> None:
        """Write the pages holding ``indexes``, each whole, from ``entries``."""
        for page in sorted({self.folder.page_of(index) for index in indexes}):
            on_page = (index for index in self.folder.items(page) if index in entries)
            records = ({"index": index, **entries[index].to_record(self.generation)} for index in on_page)
            write_records(self.folder.submitted(page), records)


def ended_outcomes(folder: BatchFolder, count: int, log: Log) -> dict[int, tuple[str, str]]:
    """
    Return how the wait for each item ended, as the batch's ``ended`` pages tell: index -> (task id, status).

    Whichever try wrote a page; one that cannot be read tells nothing (logged).
    """
    outcomes = {}
    for page in folder.pages(count):
        for record in folder.read_ended(page, count, None, log) or []:
            outcomes[record["index"]] = (record["apikley_task_id"], record["status"])
    return outcomes


@dataclass
class RetryPlan:
    """
    What a try does with each item: resume the task an earlier try left, or submit.

    :param entries: the ledger as this try starts, by index: the resumed items' entries, and the
        earlier entries of the items to submit, until they are (so a page saved meanwhile keeps them).
    :param resumed: the items whose earlier tasks are resumed.
    :param submit: the items to submit, in input order.
    :param replaced: the earlier task each submitted item's new one replaces, where there was one.
    :param orphaned: items with an intent and no task id: their create may have been paid for.
    :param changed: items whose request is not the one their earlier task was sent.
    :param ended_badly: items whose earlier task failed, timed out or errored.
    """

    entries: dict[int, LedgerEntry] = field(default_factory=dict)
    resumed: list[int] = field(default_factory=list)
    submit: list[int] = field(default_factory=list)
    replaced: dict[int, str] = field(default_factory=dict)
    orphaned: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    ended_badly: list[int] = field(default_factory=list)


def plan_retry(
    earlier: Mapping[int, LedgerEntry],
    fingerprints: Sequence[str],
    outcomes: Mapping[int, tuple[str, str]] | None = None,
) -> RetryPlan:
    """
    Decide, item by item, what this try takes over from the earlier ones.

    An item is resumed only when its earlier task was sent the same request (the same fingerprint)
    and did not end ``failed``, ``timeout`` or ``error``; every other item is submitted.

    :param earlier: what earlier tries saved, by index.
    :param fingerprints: the request fingerprint of each item this try would send.
    :param outcomes: how waits ended, by index, as (task id, status), besides the entries' own ``state``.
    """
    plan = RetryPlan()
    for index, fingerprint in enumerate(fingerprints):
        entry = earlier.get(index)
        if entry is None:
            plan.submit.append(index)
            continue
        plan.entries[index] = entry
        state = entry.state
        if state is None and outcomes and (outcome := outcomes.get(index)) and outcome[0] == entry.apikley_task_id:
            state = outcome[1]
        if entry.apikley_task_id is None:
            plan.orphaned.append(index)
        elif entry.fingerprint != fingerprint:
            plan.changed.append(index)
        elif state in RESUBMITTED_STATES:
            plan.ended_badly.append(index)
        else:
            plan.entries[index] = replace(entry, state=None)  # waited for again
            plan.resumed.append(index)
            continue
        plan.submit.append(index)
        if replaced := entry.apikley_task_id or entry.replaced_apikley_task_id:
            plan.replaced[index] = replaced
    return plan


def items_named(indexes: Sequence[int]) -> str:
    """
    Name items as a user knows them: ``inputs[2], inputs[7..9]``, the first :data:`NAMED_ITEMS` runs.

    :param indexes: in increasing order.
    """
    runs: list[list[int]] = []
    for index in indexes:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    named = [
        f"inputs[{first}..{last}]" if last - first >= 2 else ", ".join(f"inputs[{i}]" for i in range(first, last + 1))
        for first, last in runs[:NAMED_ITEMS]
    ]
    more = sum(last - first + 1 for first, last in runs[NAMED_ITEMS:])
    return ", ".join(named) + (f" (and {more} more)" if more else "")
