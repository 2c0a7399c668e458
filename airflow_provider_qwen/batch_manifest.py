"""
A batch's per-item records as JSON Lines on object storage, so nothing a batch carries grows with it.

A large batch (see :class:`~airflow_provider_qwen.operators.batch.QwenImageToImageBatchOperator`)
keeps its items in a folder per task instance,
``<output_path>/_apikley_batch/<dag_id>/<run_id>-<hash>/<task_id>/`` (then ``<map_index>/`` for a
mapped task), each name with every character but letters, digits, ``.``, ``_`` and ``-`` replaced
by ``_``, leading dots dropped and at most 100 characters kept, then ``-`` and 16 hex digits of the
SHA-256 of the name as it was: always for the run id, and for a dag or task id that had to be
changed, so two task instances never share a folder:

- ``submitted-NNNNN.jsonl``: pages of :data:`PAGE_ITEMS` items as submitted, ``{"index",
  "apikley_task_id", "submitted_at", "fingerprint", "generation"}`` and
  ``replaced_apikley_task_id`` when the item's task replaced an earlier try's, written by the
  worker once it has submitted every item. Without a task state store (Airflow 3.1, 3.2) they are
  also the batch's ledger, and while the worker submits they hold it in the compact layout of
  :mod:`~airflow_provider_qwen.batch_ledger` (one record, ``{"generation", "v", "t", "e"...}``), its
  continuations in ``submitted-NNNNN.<n>.jsonl``; an entry without a task id is an intent, a
  create begun and not yet answered;
- ``ended-NNNNN.jsonl``: the same pages once every item has ended, one :class:`~.events.TaskEvent`
  payload each with its ``index``, ``generation`` and ``replaced_apikley_task_id``, written by the
  trigger; a page there is done, so a restarted trigger resumes after it;
- ``manifest.jsonl``: one record per input, in input order, written by the worker that finishes the
  task: ``schema_version``, ``index``, ``input``, ``apikley_task_id``, ``state``, ``result_urls``,
  ``credits_consumed``, the failure when there was one, ``replaced_apikley_task_id`` when the item
  was submitted anew by a retry, and ``stored`` when the results were copied.

``generation`` is the try number of the try that wrote the record. A try that submits writes every
``submitted`` page again with its own generation
(:func:`~airflow_provider_qwen.batch_ledger.write_submitted_pages`), and an ``ended`` page counts
only for the ``submitted`` page of the same generation: an earlier try's is waited for again and
overwritten.
An ``ended`` page that cannot be read counts as not written, so a retry waits for its items again.

Schema version 2 (this one) added ``schema_version``, ``generation``, ``fingerprint``,
``replaced_apikley_task_id`` and the intents, and the ``missing`` state of an item whose
``ended`` page could not be read when the manifest was written; version 1 had none of them.

Pages are written whole (a temporary file renamed into place on a local disk, one PUT on an object
store), so a reader never sees half a page. :func:`read_batch_manifest` streams ``manifest.jsonl``
a record at a time. Each line is read no further than :data:`MAX_RECORD_BYTES` (1 MiB): a longer
one, or one that is not JSON, is an error naming the file and the line; in an ``ended`` page it
makes the page count as not written.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_qwen.events import TaskEvent
from airflow_provider_qwen.exceptions import ApikleyError
from airflow_provider_qwen.storage import LOCAL_PROTOCOLS, as_folder, with_default_mode
from airflow_provider_qwen.validation import is_task_id

if TYPE_CHECKING:
    from airflow_provider_qwen.hooks.retries import Log

#: Items per page: the trigger holds one page's waits at a time, whatever the batch's size.
PAGE_ITEMS = 1000
MANIFEST_NAME = "manifest.jsonl"
#: The longest line (one record) of a page or a manifest that is read: far more than an item's record needs.
MAX_RECORD_BYTES = 1024 * 1024
#: Bytes read from a page or a manifest at once.
READ_BLOCK_BYTES = 64 * 1024
#: The version of the records above, in each manifest record and in the large batch's summary.
SCHEMA_VERSION = 2


class BatchFolder:
    """
    The folder of one batch task's records.

    :param folder: where the pages and the manifest go (an ``ObjectStoragePath`` or its URI).
    """

    def __init__(self, folder: str | ObjectStoragePath) -> None:
        self.folder = as_folder(folder)

    @property
    def uri(self) -> str:
        """The folder's URI, for trigger arguments and events."""
        return str(self.folder)

    @property
    def manifest(self) -> ObjectStoragePath:
        """Where the finished batch's manifest is."""
        return self.folder / MANIFEST_NAME

    def submitted(self, page: int) -> ObjectStoragePath:
        """Return the file of page ``page`` as submitted."""
        return self.folder / f"submitted-{page:05d}.jsonl"

    def continuation(self, page: int, part: int) -> ObjectStoragePath:
        """Return the file of continuation ``part`` (1, 2...) of page ``page`` of the ledger (see ``PageLedger``)."""
        return self.folder / f"submitted-{page:05d}.{part}.jsonl"

    def created(self, slot: int) -> ObjectStoragePath:
        """Return the file of the ledger's created slot ``slot`` (see ``PageLedger``)."""
        return self.folder / f"created-{slot:03d}.jsonl"

    def ended(self, page: int) -> ObjectStoragePath:
        """Return the file of page ``page`` once every item on it has ended."""
        return self.folder / f"ended-{page:05d}.jsonl"

    @staticmethod
    def pages(count: int) -> range:
        """Return the page numbers of a batch of ``count`` items."""
        return range((count + PAGE_ITEMS - 1) // PAGE_ITEMS)

    @staticmethod
    def page_of(index: int) -> int:
        """Return the page item ``index`` is on."""
        return index // PAGE_ITEMS

    @staticmethod
    def items(page: int, count: int | None = None) -> range:
        """Return the indexes on page ``page`` of a batch of ``count`` items (by default, all a page holds)."""
        stop = (page + 1) * PAGE_ITEMS
        return range(page * PAGE_ITEMS, stop if count is None else min(count, stop))

    def read_ended(self, page: int, count: int, generation: int | None, log: Log) -> list[dict[str, Any]] | None:
        """
        Return the outcomes of page ``page``, or ``None`` when they are not there to be trusted.

        That is when the page was not written, was written by another try than ``generation``'s
        (``None`` trusts any), or cannot be read as one outcome for each of its items (logged as a warning).
        """
        path = self.ended(page)
        try:
            records = read_page(path)
            if records is None:
                return None
            _check_ended_page(path, records, self.items(page, count))
        except ApikleyError as err:
            log.warning("%s; its items are waited for again", err)
            return None
        written = {record.get("generation") for record in records}
        if generation is not None and written != {generation}:
            log.info("The batch page %s was written by an earlier try; its items are waited for again", path)
            return None
        return records


def write_records(dest: ObjectStoragePath, records: Iterable[dict[str, Any]]) -> int:
    """
    Write ``records`` as JSON Lines to ``dest``, whole or not at all, replacing what was there.

    :return: the bytes written.
    """
    if dest.protocol in LOCAL_PROTOCOLS:
        folder = Path(dest.parent.path)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=folder, prefix=f".{dest.name}.", delete=False) as partial:
            written = _write_lines(partial, records)
            with_default_mode(partial.fileno())
        os.replace(partial.name, dest.path)
        return written
    with tempfile.TemporaryFile() as spool:  # one PUT: an object store then never shows half a page
        written = _write_lines(spool, records)
        spool.seek(0)
        with dest.open("wb") as target:
            while block := spool.read(1024 * 1024):
                target.write(block)
    return written


def read_records(source: ObjectStoragePath) -> Iterator[dict[str, Any]]:
    """
    Yield the records of a JSON Lines file, one at a time, holding no more than one line in memory.

    :raises ApikleyError: naming the file and the line, when a line is longer than
        :data:`MAX_RECORD_BYTES` (read no further) or is not JSON.
    """
    with source.open("rb") as file:
        for number, line in enumerate(_lines(file), 1):
            if len(line) > MAX_RECORD_BYTES:
                raise ApikleyError(
                    f"{source} line {number} is longer than {MAX_RECORD_BYTES} bytes, the most a record may be"
                )
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as err:  # not UTF-8, not JSON, or nested too deep
                raise ApikleyError(f"{source} line {number} is not JSON: {type(err).__name__}: {err}") from None
            yield record


def _lines(file: Any) -> Iterator[bytes]:
    """Yield the lines of ``file``, without their ends; a line past :data:`MAX_RECORD_BYTES` is cut there, and last."""
    pending = b""
    while block := file.read(READ_BLOCK_BYTES):
        *lines, pending = (pending + block).split(b"\n")
        for line in lines:
            yield line
            if len(line) > MAX_RECORD_BYTES:
                return
        if len(pending) > MAX_RECORD_BYTES:
            yield pending
            return
    if pending:
        yield pending


def read_page(path: ObjectStoragePath) -> list[dict[str, Any]] | None:
    """
    Return the records of a page, or ``None`` when it was not written.

    :raises ApikleyError: naming the page, when it cannot be read or holds anything but JSON objects.
    """
    try:
        records = list(read_records(path))
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ApikleyError(f"The batch page {path} cannot be read: {type(err).__name__}: {err}") from None
    except ApikleyError as err:
        raise ApikleyError(f"The batch page {path} cannot be read: {err}") from None
    if not all(isinstance(record, dict) for record in records):
        raise ApikleyError(f"The batch page {path} cannot be read: a line is not a JSON object")
    return records


def read_batch_manifest(uri: str | ObjectStoragePath) -> Iterator[dict[str, Any]]:
    """
    Yield a finished batch's records, in input order, one at a time.

    Give it the ``manifest`` the batch operator returned (or its folder)::

        for item in read_batch_manifest(summary["manifest"]):
            if item["state"] == "success":
                ...

    :param uri: ``manifest.jsonl``'s URI, or the folder holding it.
    :raises ApikleyError: naming the file and the line, when a line is over 1 MiB or is not JSON.
    """
    path = as_folder(uri)
    yield from read_records(path if path.name == MANIFEST_NAME else path / MANIFEST_NAME)


def _write_lines(file: Any, records: Iterable[dict[str, Any]]) -> int:
    written = 0
    for record in records:
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        file.write(line)
        written += len(line)
    return written


def _check_ended_page(path: ObjectStoragePath, records: list[dict[str, Any]], items: range) -> None:
    """
    Check that the page at ``path`` holds one outcome for each of ``items``.

    :raises ApikleyError: naming the page and what is wrong with it.
    """
    indexes = [record.get("index") for record in records]
    if not all(type(index) is int for index in indexes) or sorted(indexes) != list(items):  # type: ignore[type-var]
        raise ApikleyError(
            f"The batch page {path} cannot be read: it does not hold one outcome for each of items "
            f"{items.start} to {items.stop - 1}"
        )
    for record in records:
        replaced = record.get("replaced_apikley_task_id")
        try:
            TaskEvent.from_payload(record)
            if replaced is not None and not is_task_id(replaced):
                raise ApikleyError(f"replaced_apikley_task_id={replaced!r} is not an Apikley task id")
        except ApikleyError as err:
            raise ApikleyError(f"The batch page {path} cannot be read: item {record['index']}: {err}") from None
