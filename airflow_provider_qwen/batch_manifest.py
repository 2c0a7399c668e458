"""
A batch's per-item records as JSON Lines on object storage, so nothing a batch carries grows with it.

A large batch (see :class:`~airflow_provider_qwen.operators.batch.QwenImageToImageBatchOperator`)
keeps its items in a folder, ``<output_path>/_apikley_batch/<run>/<task>/``:

- ``submitted-NNNNN.jsonl``: pages of :data:`PAGE_ITEMS` items as submitted, ``{"index",
  "apikley_task_id", "submitted_at"}``, written by the worker;
- ``ended-NNNNN.jsonl``: the same pages once every item has ended, one :class:`~.events.TaskEvent`
  payload each with its ``index``, written by the trigger; a page there is done, so a restarted
  trigger resumes after it;
- ``manifest.jsonl``: one record per input, in input order, written by the worker that finishes the
  task: ``index``, ``input``, ``apikley_task_id``, ``state``, ``result_urls``, ``credits_consumed``,
  the failure when there was one, and ``stored`` when the results were copied.

Pages are written whole (a temporary file renamed into place on a local disk, one PUT on an object
store), so a reader never sees half a page, and a page written again by a retry holds the same items.
:func:`read_batch_manifest` streams ``manifest.jsonl`` a record at a time.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_qwen.storage import LOCAL_PROTOCOLS, as_folder

#: Items per page: the trigger holds one page's waits at a time, whatever the batch's size.
PAGE_ITEMS = 1000
MANIFEST_NAME = "manifest.jsonl"


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

    def ended(self, page: int) -> ObjectStoragePath:
        """Return the file of page ``page`` once every item on it has ended."""
        return self.folder / f"ended-{page:05d}.jsonl"

    @staticmethod
    def pages(count: int) -> range:
        """Return the page numbers of a batch of ``count`` items."""
        return range((count + PAGE_ITEMS - 1) // PAGE_ITEMS)


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
    """Yield the records of a JSON Lines file, one at a time."""
    with source.open("rb") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def read_batch_manifest(uri: str | ObjectStoragePath) -> Iterator[dict[str, Any]]:
    """
    Yield a finished batch's records, in input order, one at a time.

    Give it the ``manifest`` the batch operator returned (or its folder)::

        for item in read_batch_manifest(summary["manifest"]):
            if item["state"] == "success":
                ...

    :param uri: ``manifest.jsonl``'s URI, or the folder holding it.
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
