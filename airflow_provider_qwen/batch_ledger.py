"""
What a batch's earlier tries submitted, so that a retry pays once for each item and reports its latest task.

Each item's entry holds its Apikley task id, when it was submitted (to the millisecond), the
:func:`~airflow_provider_qwen.resume.request_fingerprint` of what was sent, the task it replaced,
and, once known, that the wait for it failed, timed out or errored. Before a burst of creates the
batch saves an intent for each of the burst's items (an entry with no task id yet) with the task
ids of the burst before: one save per burst of up to ``creates_per_window`` items. In between,
each task id is noted as its create is answered, in a created slot of its own (one per create of a
burst, reused by the next; :meth:`ChainedPages.note_created`), where a load finds the task ids of
a burst a lost worker cut short: a retry pays again for the one create on its way at most.

On Airflow 3.3 the entries live in the task state store (:class:`BatchLedger`, pages of
:data:`LEDGER_PAGE` items). Without one (3.1, 3.2), a large batch keeps them in its own
``submitted`` pages (:class:`PageLedger`, pages of
:data:`~airflow_provider_qwen.batch_manifest.PAGE_ITEMS`, see
:mod:`~airflow_provider_qwen.batch_manifest`), and a small batch keeps none: its retry submits every
item anew.

How a page is kept (:class:`ChainedPages`): a page key (``apikley_batch/<page>``), then the
continuation keys it announces (``apikley_batch/<page>/1``, ``/2``...). A save writes only its own
items: each page's part of a burst goes into the next continuation key, and the burst's task ids
then rewrite that same key over its intents. The page key is rewritten whole (compacted) only when
a load would otherwise read more keys than the batch has pages. Every key holds compact lines, one
per entry (:func:`compact_line`: ``"<offset> <task id> <fingerprint> <ms>"``, the ids in base64,
with no field names and no try number per entry), and the version of its page key, so that a
continuation left over from before a compaction is never read. A load reads the pages in order,
each page key and the continuations it announces, and stops at the first page never written (a
page is written only once every page before it is) or at the page whose last key says that no later
one was: never more keys than the batch has pages, one read a page as before. A key holds only the
items of its own page (an entry's index is its page's start plus its offset), and a page in the
layout before continuation keys (an object of entries by index) reads as a page key nothing follows,
so a retry after upgrading pays nothing again. On object storage the keys are files,
``submitted-NNNNN.jsonl`` then ``submitted-NNNNN.<n>.jsonl``; the pages a large batch's trigger
reads (:func:`write_submitted_pages`) are in the layout before continuation keys.

Why this layout: the task state store replaces a key's whole value on each write, and a load can
only read keys it can name, one at a time. A page key holding its page's entries, appended to by
each save, keeps a load at one read a page but writes each entry about ``LEDGER_PAGE /
creates_per_window + 1`` times (6 at Apikley's default 20 creates a window: about 1 KB per item).
A key per burst writes each entry about twice, but a load would read a key per burst. Continuation
keys with compaction write each entry about twice (into its burst's key, then into its compacted
page) and keep a load within one read a page; only the last pages of a small batch, where a load
has no read to spare, are rewritten whole for each burst. Measured with bursts of 20: about 120
bytes per item at 10,000 items and more, 150 at 1,000; with bursts of 100, 60 (one write each). A
wait that ended badly is noted by rewriting its page once (every page exists by then).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_qwen.batch_manifest import BatchFolder, read_page, write_records
from airflow_provider_qwen.events import EventStatus
from airflow_provider_qwen.exceptions import ApikleyError, ApikleyUnreadableStateError
from airflow_provider_qwen.validation import is_task_id

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    from airflow_provider_qwen._compat import TaskStateStore
    from airflow_provider_qwen.hooks.retries import Log

#: Entries per page of the task state store's ledger, each page under ``apikley_batch/<page>``.
LEDGER_PAGE = 100
#: How an item's wait ended that makes a retry submit it anew.
RESUBMITTED_STATES = frozenset({EventStatus.FAILED.value, EventStatus.TIMEOUT.value, EventStatus.ERROR.value})
#: How many items a message names before it says how many more there are.
NAMED_ITEMS = 10
#: How each way a wait can end is spelled in an entry.
WAIT_ENDS = frozenset(status.value for status in EventStatus)
#: What stands for an empty field in a compact entry: in no task id, fingerprint, number or state.
EMPTY_FIELD = "."
#: An Apikley task id, or a request fingerprint, as they are: 32 hex digits.
HEX_ID = re.compile(r"[0-9a-f]{32}")
#: The same in base64url, unpadded, as a compact entry holds it.
SHORT_ID = re.compile(r"[A-Za-z0-9_-]{21}[AQgw]")
#: Characters of a request fingerprint (in base64url) a created slot keeps: 48 bits.
SLOT_FINGERPRINT = 8
#: What a fingerprint read from a created slot starts with, the rest being the slot's characters.
PARTIAL_FINGERPRINT = "~"
#: Versions of a page key each try may write: a try's first is its generation times this, so that
#: no try takes a continuation an earlier try left over for its own (a whole page its trigger
#: reads, version 0, is followed by none).
TRY_VERSIONS = 1_000_000


@dataclass(frozen=True, slots=True)
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
        submitted_at = record.get("submitted_at")
        if isinstance(submitted_at, bool) or not isinstance(submitted_at, int | float):
            raise ValueError(f"submitted_at={submitted_at!r} is not epoch seconds")
        if not isinstance(record.get("fingerprint"), str):
            raise ValueError(f"fingerprint={record.get('fingerprint')!r} is not a request fingerprint")
        if type(record.get("generation")) is not int:
            raise ValueError(f"generation={record.get('generation')!r} is not a try number")
        return cls.checked(
            record.get("apikley_task_id"),
            float(submitted_at),
            record["fingerprint"],
            record.get("replaced_apikley_task_id"),
            record.get("state"),
        )

    @classmethod
    def checked(
        cls, task_id: object, submitted_at: float, fingerprint: str, replaced: object, state: object
    ) -> LedgerEntry:
        """
        Return the entry of these fields, read back from a ledger.

        :raises ValueError: naming the field that is not what an entry holds.
        """
        if task_id is not None and not is_task_id(task_id):
            raise ValueError(f"apikley_task_id={task_id!r} is not an Apikley task id")
        if replaced is not None and not is_task_id(replaced):
            raise ValueError(f"replaced_apikley_task_id={replaced!r} is not an Apikley task id")
        if state is not None and state not in WAIT_ENDS:
            raise ValueError(f"state={state!r} is not how a wait ends")
        return cls(task_id, submitted_at, fingerprint, replaced, state)


# ---- the compact layout ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyContent:
    """
    What one key of a ledger holds, read back.

    :param version: the version of the page key it belongs to; 0 for a whole page in the layout
        before continuations, which nothing follows.
    :param more: whether it announces one more continuation key after it.
    :param entries: its entries, by index.
    :param last_page: whether it says that no later page was written, so a load stops after its page.
    """

    version: int
    more: bool
    entries: dict[int, LedgerEntry]
    last_page: bool = False


def compact_value(
    version: int, entries: Mapping[int, LedgerEntry], page_start: int, more: bool, last_page: bool = False
) -> dict[str, Any]:
    """
    Return a key's value in the compact layout: ``{"v": version, "t": base, "e": lines, "m": 1, "z": 1}``.

    ``t`` is the earliest time of its entries in epoch milliseconds and ``e`` one
    :func:`compact_line` per entry, by index, separated by newlines (both left out of a key with no
    entries); ``m`` announces one more continuation key, ``z`` that no later page was written
    (each absent when not so).
    """
    value: dict[str, Any] = {"v": version}
    if entries:
        base = min(_milliseconds(entry.submitted_at) for entry in entries.values())
        value["t"] = base
        value["e"] = "\n".join(compact_line(index - page_start, entries[index], base) for index in sorted(entries))
    if more:
        value["m"] = 1
    if last_page:
        value["z"] = 1
    return value


def compact_line(offset: int, entry: LedgerEntry, base: int) -> str:
    """
    Return an entry as one line: ``"<offset> <task id> <fingerprint> <ms after base> [<replaced> [<state>]]"``.

    ``offset`` is its place on its page, task ids and the fingerprint are in base64url
    (:func:`short_id`), ``.`` stands for an empty field, and trailing empty fields are left out. An
    intent is ``"<offset>"``, or ``"<offset> . . . <replaced>"``: until its create is answered, only
    the task it replaces matters to a retry, which submits it anew whatever it was to send.
    """
    replaced = entry.replaced_apikley_task_id and short_id(entry.replaced_apikley_task_id)
    fields: list[object] = [offset, None, None, None, replaced, entry.state]
    if entry.apikley_task_id is not None:
        fields[1:4] = [
            short_id(entry.apikley_task_id),
            short_id(entry.fingerprint),
            _milliseconds(entry.submitted_at) - base,
        ]
    while fields[-1] is None:
        fields.pop()
    return " ".join(EMPTY_FIELD if field is None else str(field) for field in fields)


def read_compact(value: object, page: int, page_size: int) -> KeyContent:
    """
    Read a key :func:`compact_value` wrote for page ``page`` of ``page_size`` items.

    :raises ValueError: saying what is wrong with it.
    """
    if not isinstance(value, dict) or type(value.get("v")) is not int or value["v"] < 1:
        raise ValueError(f"a ledger key must be an object with a version, got {str(value)[:100]!r}")
    base, lines, more, last_page = value.get("t", 0), value.get("e", ""), value.get("m", 0), value.get("z", 0)
    if type(base) is not int or not isinstance(lines, str) or more not in (0, 1) or last_page not in (0, 1):
        raise ValueError(f"t={base!r}, m={more!r}, z={last_page!r} or e is not what a ledger key holds")
    entries: dict[int, LedgerEntry] = {}
    for line in lines.split("\n") if lines else []:
        offset, entry = _entry_of_line(line, base)
        index = page * page_size + offset
        if not 0 <= offset < page_size or index in entries:
            raise ValueError(f"the entry {line!r} does not belong on this page, or is on it twice")
        entries[index] = entry
    return KeyContent(value["v"], more == 1, entries, last_page == 1)


def _entry_of_line(line: str, base: int) -> tuple[int, LedgerEntry]:
    """Read one :func:`compact_line`: its offset and its entry (an intent at ``base``)."""
    offset, *rest = line.split(" ")
    if len(rest) > 5 or not re.fullmatch(r"[0-9]+", offset):
        raise ValueError(f"an entry must be its place on the page and up to 5 fields, got {line!r}")
    fields: list[str | None] = [None if field == EMPTY_FIELD else field for field in rest]
    task_id, fingerprint, after, replaced, state = fields + [None] * (5 - len(fields))
    replaced = replaced and full_id(replaced)
    if task_id is None and fingerprint is None and after is None:
        return int(offset), LedgerEntry.checked(None, base / 1000, "", replaced, state)
    if task_id is None or fingerprint is None or after is None or not re.fullmatch(r"-?[0-9]+", after):
        raise ValueError(f"the entry {line!r} is neither an intent nor a task id, fingerprint and time")
    submitted_at = (base + int(after)) / 1000
    return int(offset), LedgerEntry.checked(full_id(task_id), submitted_at, full_id(fingerprint), replaced, state)


def short_id(value: str) -> str:
    """
    Return 32 hex digits (an Apikley task id, a request fingerprint) as 22 base64url characters.

    Any other value is kept as it is, after ``=`` (which base64url never holds).
    """
    if not HEX_ID.fullmatch(value):
        return f"={value}"
    return base64.urlsafe_b64encode(bytes.fromhex(value)).rstrip(b"=").decode()


def full_id(short: str) -> str:
    """
    Return the value :func:`short_id` shortened.

    :raises ValueError: when it is not one :func:`short_id` returns.
    """
    if short.startswith("="):
        return short[1:]
    if not SHORT_ID.fullmatch(short):
        raise ValueError(f"{short!r} is neither 22 base64url characters nor a value after '='")
    return base64.urlsafe_b64decode(f"{short}==").hex()


def created_value(index: int, entry: LedgerEntry) -> str:
    """
    Return a created item's slot value: ``"<index> <task id> <fingerprint> [<replaced>]"``.

    The task ids are in base64url (:func:`short_id`), the fingerprint its first
    :data:`SLOT_FINGERPRINT` characters (enough to tell whether a retry sends the same request),
    and ``replaced`` is the task its intent replaces, which ties the slot to that intent (see
    :meth:`ChainedPages.load`). The create's time is left out: the intent's stands for it, which
    its key keeps as the earliest of the key's times (an earlier first status query at worst).
    """
    fields = [str(index), short_id(str(entry.apikley_task_id)), short_id(entry.fingerprint)[:SLOT_FINGERPRINT]]
    if entry.replaced_apikley_task_id:
        fields.append(short_id(entry.replaced_apikley_task_id))
    return " ".join(fields)


def read_created(value: object) -> tuple[int, LedgerEntry]:
    """
    Read a slot :func:`created_value` wrote: the item's index and its entry, with no time (0).

    The entry's fingerprint is the slot's start of one after :data:`PARTIAL_FINGERPRINT`, which
    :func:`same_request` compares.

    :raises ValueError: saying what is wrong with it.
    """
    fields = value.split(" ") if isinstance(value, str) else []
    if len(fields) not in (3, 4) or not fields[0].isdigit() or not re.fullmatch(r"[A-Za-z0-9_-]+", fields[2]):
        raise ValueError(f"a created slot must hold an index, a task id and a fingerprint, got {str(value)[:100]!r}")
    replaced = full_id(fields[3]) if len(fields) == 4 else None
    fingerprint = PARTIAL_FINGERPRINT + fields[2]
    return int(fields[0]), LedgerEntry.checked(full_id(fields[1]), 0.0, fingerprint, replaced, None)


def same_request(saved: str, fingerprint: str) -> bool:
    """Whether the ``saved`` fingerprint, whole or as a slot keeps it, is ``fingerprint``."""
    if saved.startswith(PARTIAL_FINGERPRINT):
        return short_id(fingerprint).startswith(saved[len(PARTIAL_FINGERPRINT) :])
    return saved == fingerprint


def _milliseconds(seconds: float) -> int:
    return round(seconds * 1000)


# ---- where the keys are ----------------------------------------------------------------------------


class PageKeys(Protocol):
    """Where a ledger's keys are: each page's key (``part`` 0), then its continuation keys (1, 2...)."""

    @property
    def page_size(self) -> int:
        """The items of a page."""

    def read(self, page: int, part: int) -> KeyContent | None:
        """
        Return what the key holds, or ``None`` when it was never written.

        :raises ValueError: saying what is wrong with it.
        """

    def write(self, page: int, part: int, value: dict[str, Any]) -> None:
        """Write ``value`` (:func:`compact_value`) to the key, replacing what it held."""

    def unreadable(self, page: int, part: int, problem: Exception) -> ApikleyError:
        """Return the error that a key cannot be read, naming it."""

    def read_created(self, slot: int) -> object:
        """Return what created slot ``slot`` holds, or ``None`` when it was never written."""

    def write_created(self, slot: int, value: str) -> None:
        """Write ``value`` (:func:`created_value`) to created slot ``slot``."""

    def created_name(self, slot: int) -> str:
        """Return the name of created slot ``slot``, as an error about it says."""


class StateStoreKeys:
    """
    A ledger's keys in the task state store: ``apikley_batch/<page>``, then ``apikley_batch/<page>/<part>``.

    :param state_store: ``context["task_state_store"]``.
    """

    page_size = LEDGER_PAGE

    def __init__(self, state_store: TaskStateStore) -> None:
        self.state_store = state_store

    @staticmethod
    def key(page: int, part: int) -> str:
        """Return the key of ``page``'s ``part`` (0 for the page's own key)."""
        return f"apikley_batch/{page}" + (f"/{part}" if part else "")

    def read(self, page: int, part: int) -> KeyContent | None:
        """Return what the key holds, in either layout; ``None`` when it was never written."""
        value = self.state_store.get(self.key(page, part))
        if value is None:
            return None
        if part == 0 and isinstance(value, dict) and "v" not in value:
            return KeyContent(0, False, _whole_page(value, page))
        return read_compact(value, page, self.page_size)

    def write(self, page: int, part: int, value: dict[str, Any]) -> None:
        """Save ``value`` under the key."""
        self.state_store.set(self.key(page, part), value)

    def read_created(self, slot: int) -> object:
        """Return what ``apikley_batch/created/<slot>`` holds."""
        return self.state_store.get(self.created_name(slot))

    def write_created(self, slot: int, value: str) -> None:
        """Save ``value`` under ``apikley_batch/created/<slot>``."""
        self.state_store.set(self.created_name(slot), value)

    @staticmethod
    def created_name(slot: int) -> str:
        """Return the key of created slot ``slot``."""
        return f"apikley_batch/created/{slot}"

    def unreadable(self, page: int, part: int, problem: Exception) -> ApikleyError:
        """Return the error that the key cannot be read, naming it."""
        return ApikleyUnreadableStateError(
            f"The batch's ledger page {self.key(page, part)} in the task state store cannot be read: {problem}. "
            "This try submitted nothing; without the page, its items would be submitted and paid for again"
        )


def _whole_page(value: dict[str, Any], page: int) -> dict[int, LedgerEntry]:
    """Read a page the way the ledger wrote them before continuations: entries by index (a string)."""
    entries = {}
    for index, record in value.items():
        if not str(index).isdigit() or int(index) // LEDGER_PAGE != page:
            raise ValueError(f"index {index!r} does not belong on this page")
        entries[int(index)] = LedgerEntry.from_record(record)
    return entries


class FolderKeys:
    """
    A ledger's keys as files of a batch's folder: ``submitted-NNNNN.jsonl``, then ``submitted-NNNNN.<part>.jsonl``.

    A page its trigger reads (whole, as :func:`write_submitted_pages` writes it) is read as the
    layout before continuations.

    :param folder: the batch's folder.
    :param generation: the try number of the try that writes, with which every file is tagged.
    """

    def __init__(self, folder: BatchFolder, generation: int) -> None:
        self.folder = folder
        self.generation = generation

    @property
    def page_size(self) -> int:
        """The items of a page, as the batch's folder pages them."""
        return len(self.folder.items(0))

    def path(self, page: int, part: int) -> ObjectStoragePath:
        """Return the file of ``page``'s ``part`` (0 for the page itself)."""
        return self.folder.submitted(page) if part == 0 else self.folder.continuation(page, part)

    def read(self, page: int, part: int) -> KeyContent | None:
        """Return what the file holds, in either layout; ``None`` when it was never written."""
        records = read_page(self.path(page, part))
        if records is None:
            return None
        if len(records) == 1 and "v" in records[0]:
            return read_compact(records[0], page, self.page_size)
        if part != 0:
            raise ValueError("a continuation must be one compact record")
        return KeyContent(0, False, _submitted_records(records, self.folder, page))

    def write(self, page: int, part: int, value: dict[str, Any]) -> None:
        """Write ``value`` as the file's one line, tagged with this try's generation (which its trigger checks)."""
        write_records(self.path(page, part), [{"generation": self.generation, **value}])

    def read_created(self, slot: int) -> object:
        """Return the one record of ``created-NNN.jsonl``: ``{"e": value}``."""
        records = read_page(self.folder.created(slot))
        return records if records is None or len(records) != 1 else records[0].get("e")

    def write_created(self, slot: int, value: str) -> None:
        """Write ``value`` as the one line of ``created-NNN.jsonl``."""
        write_records(self.folder.created(slot), [{"e": value}])

    def created_name(self, slot: int) -> str:
        """Return the file of created slot ``slot``."""
        return str(self.folder.created(slot))

    def unreadable(self, page: int, part: int, problem: Exception) -> ApikleyError:
        """Return the error that the file cannot be read, naming it."""
        return ApikleyError(
            f"The batch page {self.path(page, part)} cannot be read: {problem}. This try submitted nothing; without "
            "the page, its items would be submitted and paid for again"
        )


def _submitted_records(records: list[dict[str, Any]], folder: BatchFolder, page: int) -> dict[int, LedgerEntry]:
    """Read a ``submitted`` page as its trigger reads it: one record per item with its ``index``."""
    entries = {}
    for record in records:
        index = record.get("index")
        if type(index) is not int or folder.page_of(index) != page:
            raise ValueError(f"index {index!r} does not belong on this page")
        entries[index] = LedgerEntry.from_record(record)
    return entries


# ---- pages, continued ------------------------------------------------------------------------------


@dataclass
class Chain:
    """
    How one page is kept: its page key, then the continuation keys a load reads after it.

    :param version: the page key's; a continuation of another version is left over from before it.
    :param continuations: the continuation keys of this version, which a load reads.
    :param more: whether the last key announces one more, which a load then reads (or tries to).
    :param last_page: whether the last key says that no later page was written.
    :param last: what the last continuation holds.
    :param held: the items the last write to the page was for, so that their next save rewrites that key.
    """

    version: int = 0
    continuations: int = 0
    more: bool = False
    last_page: bool = False
    last: dict[int, LedgerEntry] = field(default_factory=dict)
    held: frozenset[int] = frozenset()

    @property
    def reads(self) -> int:
        """The reads a load makes after the page key."""
        return self.continuations + self.more


class ChainedPages:
    """
    A ledger's pages, each a page key then the continuation keys it announces, so that a save writes little.

    A save writes each page's part of it into the next continuation key when the page's last key
    announced one; it rewrites in place the key that holds the same items (a burst's task ids after
    its intents); otherwise it extends the last continuation or rewrites the page key whole
    (compaction), whichever writes less. A key announces a next one only while its page has items
    without an entry and a load would still read no more keys than the batch has pages; when it
    would read more, the pages this save does not touch are compacted, oldest first. A load reads
    the pages in order up to the first never written, or up to the page whose last key says no
    later page was written (which the highest page says while it has items without an entry).

    :param keys: where the keys are.
    :param count: the batch's items, which set how many keys a load may read; ``None`` announces
        no continuation, so each save rewrites its pages whole.
    :param generation: the try number of the try that writes.
    """

    def __init__(self, keys: PageKeys, count: int | None = None, generation: int = 1) -> None:
        self.keys = keys
        self.count = count
        self.generation = generation
        self.stored: dict[int, dict[int, LedgerEntry]] = {}
        self.chains: dict[int, Chain] = {}
        self.written = 0
        self._continued: dict[int, int] = {}
        self._saving: tuple[int, bool] | None = None

    @property
    def page_count(self) -> int | None:
        """The pages of the batch, and the most keys a load may read; ``None`` until the batch's size is known."""
        return None if self.count is None else (self.count + self.keys.page_size - 1) // self.keys.page_size

    def load(self, count: int) -> dict[int, LedgerEntry]:
        """
        Return the entries of a batch of ``count`` items that earlier tries saved, by index.

        :raises ApikleyError: naming the key, when one cannot be read as entries.
        """
        self.count, self.stored, self.chains, self.written, self._continued = count, {}, {}, 0, {}
        for page in range(self.page_count or 0):
            content = self._read(page, 0)
            if content is None:
                break
            self.stored[page] = dict(content.entries)
            self.chains[page] = chain = Chain(content.version)
            while content.more and (following := self._read(page, chain.continuations + 1)):
                if following.version != chain.version:
                    break  # left over from before the page key: the one announced was never written
                self.stored[page].update(following.entries)
                chain.continuations, chain.last, content = chain.continuations + 1, following.entries, following
            self._chain(page, chain.continuations, content.more, content.last_page)
            self.written = page + 1
            if content.last_page:
                break
        entries = {index: entry for entries in self.stored.values() for index, entry in entries.items()}
        if created := self._created(entries):
            entries.update(created)
            self.save(created, entries)  # before this try's creates take the slots over
        return entries

    def note_created(self, slot: int, index: int, entry: LedgerEntry) -> None:
        """
        Keep the task id of ``index``, the ``slot`` th create of its burst, until its burst's next save.

        The burst's save writes it where it belongs; until then a load finds it in the slot.
        """
        self.keys.write_created(slot, created_value(index, entry))

    def _created(self, entries: Mapping[int, LedgerEntry]) -> dict[int, LedgerEntry]:
        """
        Return the intents of ``entries`` whose creates were answered, as their slots keep them.

        A burst creates its items in order, each into the next slot, so a load reads the slots in
        order, from the first that is one of the intents to the first after it that is not, passing
        over the slots before it whose creates are already saved where they belong (a save that
        writes the lower pages first was cut short): at most a burst and one more slot. A slot
        counts for an intent of the same item that replaces the same task, which no earlier burst's
        slot does (an item submitted anew replaces the task it had).
        """
        intents = {index: entry for index, entry in entries.items() if entry.apikley_task_id is None}
        created: dict[int, LedgerEntry] = {}
        slot = 0
        while len(created) < len(intents) and (value := self.keys.read_created(slot)) is not None:
            try:
                index, entry = read_created(value)
            except ValueError as err:
                raise ApikleyUnreadableStateError(
                    f"The batch's ledger slot {self.keys.created_name(slot)} cannot be read: {err}. This try "
                    "submitted nothing; without it, the item it names would be submitted and paid for again"
                ) from None
            intent, saved = intents.get(index), entries.get(index)
            if (
                intent is not None
                and index not in created
                and intent.replaced_apikley_task_id == entry.replaced_apikley_task_id
            ):
                created[index] = replace(entry, submitted_at=intent.submitted_at)  # at most a window early
            elif created or saved is None or saved.apikley_task_id != entry.apikley_task_id:
                break
            slot += 1
        return created

    def save(self, indexes: Iterable[int], entries: Mapping[int, LedgerEntry]) -> None:
        """Save the entries of ``indexes`` (those without one in ``entries`` go), each on its own page."""
        parts: dict[int, frozenset[int]] = {}
        for index in sorted(indexes):
            page = index // self.keys.page_size
            parts[page] = parts.get(page, frozenset()) | {index}
        if not parts:
            return
        for page in range(self.written, max(parts)):  # never a page after one not written
            parts.setdefault(page, frozenset())
        highest = max(max(parts), self.written - 1)
        ends = self._ends(highest, self._after(highest, parts.get(highest, frozenset()), entries))
        self._saving = (highest + 1, ends)
        try:
            self._make_room(0, keep=set(parts))
            frontier = self.written - 1
            if highest > frontier >= 0 and frontier not in parts and self.chains[frontier].last_page:
                self._no_longer_last(frontier)
            for page in sorted(parts):
                self._save_part(page, parts[page], entries, keep=set(parts))
        finally:
            self._saving = None

    def _save_part(self, page: int, part: frozenset[int], entries: Mapping[int, LedgerEntry], keep: set[int]) -> None:
        """Save ``part``, the items of this save on ``page``, where it writes least (see the class)."""
        chain = self.chains.setdefault(page, Chain())
        stored = self.stored.setdefault(page, {})
        values = {index: entries[index] for index in part if index in entries}
        after = self._after(page, part, entries)
        last = {index: entry for index, entry in chain.last.items() if index not in part} | values
        compaction = len(stored) + len(values) if stored and self._fits(1 - chain.reads) else None
        extension = 2 * len(chain.last) + len(values) if chain.continuations else None
        removed = any(index in stored and index not in entries for index in part)
        if page >= self.written or not self._fits(0):
            self._write_page(page, after, keep)
        elif part and chain.held == part:  # the same items again: a burst's intents taken back
            self._rewrite_last(page, last, after, keep)
        elif removed:  # a key written after the one that holds them cannot take them away
            self._write_page(page, after, keep)
        elif chain.more:
            self._append(page, values, after, keep)
        elif extension is not None and (compaction is None or extension <= compaction):
            self._rewrite_last(page, last, after, keep)
        elif compaction is not None and compaction < 2 * len(after):
            self._write_page(page, stored, keep, more=True)
            self._append(page, values, after, keep)
        else:
            self._write_page(page, after, keep)
        self.stored[page] = after
        chain.held = part

    def _after(self, page: int, part: frozenset[int], entries: Mapping[int, LedgerEntry]) -> dict[int, LedgerEntry]:
        """Return ``page``'s entries once ``part`` of it is saved from ``entries``."""
        stored = self.stored.get(page, {})
        return {index: entry for index, entry in stored.items() if index not in part} | {
            index: entries[index] for index in part if index in entries
        }

    def _write_page(self, page: int, entries: dict[int, LedgerEntry], keep: set[int], more: bool | None = None) -> None:
        """Rewrite ``page``'s key whole with ``entries``, which leaves over every continuation it had."""
        chain = self.chains[page]
        chain.version, chain.last = max(chain.version + 1, self.generation * TRY_VERSIONS), {}
        self.written = max(self.written, page + 1)
        self._chain(page, 0, False, self._ends(page, entries))
        self._chain(page, 0, self._announce(page, entries, keep) if more is None else more, chain.last_page)
        self._write_key(page, 0, entries)

    def _append(self, page: int, values: dict[int, LedgerEntry], after: dict[int, LedgerEntry], keep: set[int]) -> None:
        """Write ``values`` to the continuation ``page``'s last key announced."""
        chain = self.chains[page]
        self._chain(page, chain.continuations + 1, False, self._ends(page, after))
        self._chain(page, chain.continuations, self._announce(page, after, keep), chain.last_page)
        chain.last = values
        self._write_key(page, chain.continuations, values)

    def _rewrite_last(
        self, page: int, last: dict[int, LedgerEntry], after: dict[int, LedgerEntry], keep: set[int]
    ) -> None:
        """Rewrite ``page``'s last key: its last continuation as ``last``, or its page key as ``after``."""
        chain = self.chains[page]
        if chain.continuations == 0:
            self._write_page(page, after, keep)
            return
        self._chain(page, chain.continuations, chain.more, self._ends(page, after))
        self._chain(page, chain.continuations, chain.more or self._announce(page, after, keep), chain.last_page)
        chain.last = last
        self._write_key(page, chain.continuations, last)

    def _no_longer_last(self, page: int) -> None:
        """Rewrite ``page``'s last key without saying that no later page was written, before one is."""
        chain = self.chains[page]
        self._chain(page, chain.continuations, chain.more, False)
        self._write_key(page, chain.continuations, chain.last if chain.continuations else self.stored[page])

    def _write_key(self, page: int, part: int, entries: dict[int, LedgerEntry]) -> None:
        """Write ``page``'s last key (``part``) with ``entries`` and the chain's announcements."""
        chain = self.chains[page]
        value = compact_value(chain.version, entries, page * self.keys.page_size, chain.more, chain.last_page)
        self.keys.write(page, part, value)

    def _ends(self, page: int, entries: Mapping[int, LedgerEntry]) -> bool:
        """Whether ``page``'s last key, holding ``entries``, says no later page was written: the highest, not full."""
        highest = (self._saving[0] if self._saving else self.written) - 1
        return page == highest and page < (self.page_count or 0) - 1 and len(entries) < self._items_on(page)

    def _announce(self, page: int, entries: Mapping[int, LedgerEntry], keep: set[int]) -> bool:
        """
        Whether the key being written to ``page``, which then holds ``entries``, announces one more.

        Only while the page has items without an entry, which this try may yet submit; when a load
        would then read too many keys, pages this save does not touch are compacted to make room.
        """
        return len(entries) < self._items_on(page) and self._make_room(1, keep)

    def _items_on(self, page: int) -> int:
        return min(self.keys.page_size, (self.count or 0) - page * self.keys.page_size)

    def _make_room(self, extra: int, keep: set[int]) -> bool:
        """Compact pages outside ``keep``, oldest first, until a load may read ``extra`` more keys."""
        for page in sorted(self._continued):
            if self._fits(extra):
                break
            if page not in keep:
                self._write_page(page, self.stored[page], keep, more=False)
                self.chains[page].held = frozenset()
        return self._fits(extra)

    def _fits(self, extra: int) -> bool:
        """Whether a load, once this save's pages are written, would read no more keys than the batch has pages."""
        page_count = self.page_count
        if page_count is None:
            return extra <= 0
        return self.reads() + extra <= page_count

    def reads(self) -> int:
        """Return the keys a load reads (during a save, once its pages are written)."""
        page_count = self.page_count or 0
        if self._saving:
            pages, ends = self._saving
        else:
            pages, ends = self.written, bool((chain := self.chains.get(self.written - 1)) and chain.last_page)
        pages = min(pages, page_count)
        return pages + (pages < page_count and not ends) + sum(self._continued.values())

    def _chain(self, page: int, continuations: int, more: bool, last_page: bool) -> None:
        """Set what a load reads after ``page``'s key, and whether it stops there."""
        chain = self.chains[page]
        chain.continuations, chain.more, chain.last_page = continuations, more, last_page
        if chain.reads:
            self._continued[page] = chain.reads
        else:
            self._continued.pop(page, None)

    def _read(self, page: int, part: int) -> KeyContent | None:
        try:
            return self.keys.read(page, part)
        except ValueError as err:
            raise self.keys.unreadable(page, part, err) from None


# ---- the ledgers -----------------------------------------------------------------------------------


class Ledger(Protocol):
    """Where a batch keeps its entries across tries."""

    def load(self, count: int) -> dict[int, LedgerEntry]:
        """Return the entries of a batch of ``count`` items that earlier tries saved, by index."""

    def save(self, indexes: Iterable[int], entries: Mapping[int, LedgerEntry]) -> None:
        """Save the entries of ``indexes`` from ``entries``; an index with none there has none saved."""

    def note_created(self, slot: int, index: int, entry: LedgerEntry) -> None:
        """Keep ``entry`` of ``index``, the ``slot`` th create of a burst, until the burst's next save."""


class BatchLedger:
    """
    A batch's entries in Airflow 3.3's task state store, in pages of :data:`LEDGER_PAGE` items.

    Without a task state store it remembers nothing, and a retry submits every item anew.

    :param state_store: ``context["task_state_store"]``, or ``None``.
    :param generation: the try number of the try that writes.
    :param count: the batch's items; without it each save rewrites its pages whole (a
        :meth:`load` tells it too).
    """

    def __init__(self, state_store: TaskStateStore | None, generation: int = 1, count: int | None = None) -> None:
        self.state_store = state_store
        self.generation = generation
        self.pages = None if state_store is None else ChainedPages(StateStoreKeys(state_store), count, generation)

    def load(self, count: int) -> dict[int, LedgerEntry]:
        """
        Return the entries of a batch of ``count`` items that earlier tries saved, by index.

        :raises ApikleyUnreadableStateError: naming the key, when one cannot be read as entries.
        """
        return {} if self.pages is None else self.pages.load(count)

    def save(self, indexes: Iterable[int], entries: Mapping[int, LedgerEntry]) -> None:
        """Save the entries of ``indexes`` from ``entries`` (items never move between pages)."""
        if self.pages is not None:
            self.pages.save(indexes, entries)

    def note_created(self, slot: int, index: int, entry: LedgerEntry) -> None:
        """Keep ``entry`` of ``index``, the ``slot`` th create of a burst, until the burst's next save."""
        if self.pages is not None:
            self.pages.note_created(slot, index, entry)

    def settle(self, count: int, outcomes: Mapping[int, tuple[str, str]]) -> None:
        """
        Note the waits that ended badly, so that a retry submits anew only those items.

        A wait that succeeded needs no note: a retry resumes an item whose entry has none.

        :param outcomes: index -> (Apikley task id, the wait's status); an item whose entry names
            another task is left alone.
        """
        ended_badly = {index: ended for index, ended in outcomes.items() if ended[1] in RESUBMITTED_STATES}
        if self.pages is None or not ended_badly:
            return
        entries = self.load(count)
        settled = [
            index
            for index, (task_id, _) in ended_badly.items()
            if index in entries and entries[index].apikley_task_id == task_id
        ]
        for index in settled:
            entries[index] = replace(entries[index], state=ended_badly[index][1])
        self.save(settled, entries)


class PageLedger:
    """
    A large batch's entries in its own ``submitted`` pages, where there is no task state store.

    :param folder: the batch's folder.
    :param generation: the try number of the try that writes.
    :param count: the batch's items; without it each save rewrites its pages whole (a
        :meth:`load` tells it too).
    """

    def __init__(self, folder: BatchFolder, generation: int = 1, count: int | None = None) -> None:
        self.folder = folder
        self.generation = generation
        self.pages = ChainedPages(FolderKeys(folder, generation), count, generation)

    def load(self, count: int) -> dict[int, LedgerEntry]:
        """
        Return the entries of a batch of ``count`` items that earlier tries saved, by index.

        :raises ApikleyError: naming the page, when one cannot be read as entries.
        """
        return self.pages.load(count)

    def save(self, indexes: Iterable[int], entries: Mapping[int, LedgerEntry]) -> None:
        """Save the entries of ``indexes`` from ``entries`` (items never move between pages)."""
        self.pages.save(indexes, entries)

    def note_created(self, slot: int, index: int, entry: LedgerEntry) -> None:
        """Keep ``entry`` of ``index``, the ``slot`` th create of a burst, until the burst's next save."""
        self.pages.note_created(slot, index, entry)


def write_submitted_pages(folder: BatchFolder, generation: int, count: int, entries: Mapping[int, LedgerEntry]) -> None:
    """
    Write every ``submitted`` page of a large batch whole, as its trigger reads them, tagged with ``generation``.

    The trigger waits for these and no earlier try's; a :class:`PageLedger` reads them as whole pages.
    """
    for page in folder.pages(count):
        on_page = (index for index in folder.items(page, count) if index in entries)
        records = ({"index": index, **entries[index].to_record(generation)} for index in on_page)
        write_records(folder.submitted(page), records)


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
        elif not same_request(entry.fingerprint, fingerprint):
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
