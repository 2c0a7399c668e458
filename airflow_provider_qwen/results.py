"""
An edit's results copied to the user's storage, for each place an edit ends.

Above :mod:`airflow_provider_qwen.storage` (which names, checks and writes), and using the hook
(which downloads) through :class:`ResultDownloader` only: the operators, the sensor and the triggers
call it alike, so every path stores the same files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

from airflow_provider_qwen.exceptions import ApikleyError, ApikleyResultExistsError
from airflow_provider_qwen.names import UNIQUE_SUFFIX_CHARS, name_part, render_result_name
from airflow_provider_qwen.storage import (
    StoredFile,
    as_folder,
    named_destination,
    result_destination,
    result_extension,
)
from airflow_provider_qwen.validation import check_task_id

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import ObjectStoragePath
    from airflow.sdk.types import Logger


class ResultDownloader(Protocol):
    """
    What copying results uses of :class:`~airflow_provider_qwen.hooks.apikley.ApikleyHook`.

    A protocol rather than the hook's class, so that the hook can hand its old ``store_results``
    method on to :func:`store_results` without the two modules importing each other.
    """

    @property
    def log(self) -> Logger:
        """Where each stored file is reported."""

    def download_result(self, url: str, dest: str | ObjectStoragePath) -> StoredFile:
        """Copy the result at ``url`` to ``dest``, checked and atomically."""


#: The default ``result_name`` of a mapped edit or a batch item, and of a single unmapped edit.
DEFAULT_ITEM_RESULT_NAME, DEFAULT_RESULT_NAME = "{source_stem}-{index}", "{source_stem}"
#: The suffix an upload through the hook gives a stored name (see :mod:`~.hooks.uploads`), dropped from a stem.
UPLOAD_SUFFIX = re.compile(rf"-[0-9a-f]{{{UNIQUE_SUFFIX_CHARS}}}$")


def source_stem(image_url: str | None, fallback: str) -> str:
    """
    Return the name of the image at ``image_url`` without its extension, as part of a file name.

    ``https://host/in/Shoe%20red.png`` gives ``Shoe_red``; the ``-<16 hex digits>`` an upload
    through the hook adds is dropped (``shoe-0123456789abcdef.png`` gives ``shoe``). ``fallback``
    when there is no URL or nothing of its name is left.
    """
    if not image_url:
        return fallback
    last = unquote(urlsplit(image_url).path).rsplit("/", 1)[-1]
    stem = last.rsplit(".", 1)[0] if "." in last.lstrip(".") else last
    return name_part(UPLOAD_SUFFIX.sub("", stem), fallback)


def result_name(template: str | None, *, image_url: str | None, index: int | None, apikley_task_id: str) -> str | None:
    """
    Return the name an edit's results are stored under, or ``None`` for ``<apikley_task_id>-<n>``.

    :param template: the operator's ``result_name``; ``None`` for the default, ``{source_stem}-{index}``
        for a mapped edit or a batch item (``index`` not ``None``), else ``{source_stem}``, and
        ``None`` (each result as ``<apikley_task_id>-<n>``) for an edit with no source image.
    :param image_url: the source image, whose name is ``{source_stem}`` (the task id when none).
    :raises ApikleyInputError: naming ``result_name`` when the name breaks the file name rule.
    """
    if template is None:
        if not image_url:
            return None
        template = DEFAULT_RESULT_NAME if index is None else DEFAULT_ITEM_RESULT_NAME
    stem = source_stem(image_url, apikley_task_id)
    return render_result_name(template, source_stem=stem, index=index or 0, apikley_task_id=apikley_task_id)


def request_image_urls(request: dict[str, Any]) -> dict[str, str]:
    """
    Return the image URLs an Apikley ``input`` names, by the field that names each.

    Those are the top-level fields called ``image_url`` or ending in ``_image_url`` (a URL each),
    and ``image_urls`` or ending in ``_image_urls`` (a list of URLs), as Apikley's image models name
    them: ``{"input.image_url": ..., "input.image_urls[1]": ...}``.
    """
    urls: dict[str, str] = {}
    for name, value in request.items():
        if (name == "image_url" or name.endswith("_image_url")) and isinstance(value, str):
            urls[f"input.{name}"] = value
        elif (name == "image_urls" or name.endswith("_image_urls")) and isinstance(value, list):
            urls.update((f"input.{name}[{n}]", url) for n, url in enumerate(value) if isinstance(url, str))
    return urls


def edit_result_name(
    template: str | None, image_urls: Iterable[str], map_index: object, apikley_task_id: str
) -> str | None:
    """
    Return what one edit's results are called (see :func:`result_name`).

    :param image_urls: the edit's source images (see :func:`request_image_urls`); the first names it.
    :param map_index: the task instance's; an unmapped task's (``-1`` or ``None``) gives no index.
    """
    source = next(iter(image_urls), None)
    return result_name(
        template,
        image_url=source,
        index=map_index if type(map_index) is int and map_index >= 0 else None,
        apikley_task_id=apikley_task_id,
    )


class DistinctNames:
    """
    Names handed out to a batch's items in input order, none twice.

    A name already handed out gets ``-2``, ``-3``... (the lowest one free), so the same items in the
    same order always get the same names, and no item's results are written over another's.
    """

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def claim(self, name: str | None) -> str | None:
        """Return ``name``, or the first of ``name-2``, ``name-3``... not handed out yet; ``None`` for ``None``."""
        if name is None:
            return None
        unique, number = name, 2
        while unique in self.taken:
            unique, number = f"{name}-{number}", number + 1
        self.taken.add(unique)
        return unique


def store_results(
    hook: ResultDownloader,
    apikley_task_id: str,
    result_urls: Sequence[str],
    folder: str | ObjectStoragePath,
    extension: str = "png",
    name: str | None = None,
) -> list[StoredFile]:
    """
    Copy every result of a task into ``folder``.

    Each is ``<name>.<extension>``, or ``<name>-<n>.<extension>`` when the task has several; with
    no ``name``, ``<apikley_task_id>-<n>.<extension>``. A file of that name with other bytes (another
    edit's) is never written over: the result goes to ``<name>-<apikley_task_id>...`` instead.

    :param hook: downloads each result (see :meth:`ApikleyHook.download_result`).
    :param name: what to call the results (see :func:`result_name`), a checked file name.
    :raises ApikleyBadResponseError: when the task id is not shaped like one (it names the files).
    """
    folder = as_folder(folder)
    stored = [
        _store_one(hook, url, folder, apikley_task_id, index, len(result_urls), extension, name)
        for index, url in enumerate(result_urls)
    ]
    for item in stored:
        hook.log.info("Stored %s (%d bytes, sha256 %s)", item.uri, item.size, item.sha256)
    return stored


def _store_one(
    hook: ResultDownloader,
    url: str,
    folder: ObjectStoragePath,
    apikley_task_id: str,
    index: int,
    count: int,
    extension: str,
    name: str | None,
) -> StoredFile:
    if name is None:
        return hook.download_result(url, result_destination(folder, apikley_task_id, index, extension))
    try:
        return hook.download_result(url, named_destination(folder, name, index, count, extension))
    except ApikleyResultExistsError as err:
        hook.log.warning("%s; storing it beside, named after Apikley task %s", err, apikley_task_id)
        check_task_id(apikley_task_id)
        beside = named_destination(folder, f"{name}-{apikley_task_id}", index, count, extension)
        return hook.download_result(url, beside)


def with_stored_results(
    hook: ResultDownloader, summary: dict[str, Any], output_path: str | ObjectStoragePath, name: str | None = None
) -> dict[str, Any]:
    """
    ``summary`` (an edit's XCom value) with ``stored``: its results copied into ``output_path``.

    :param name: what to call the results (see :func:`store_results`).
    :raises ApikleyError: when a copy fails, naming the paid task and where its results still are.
    """
    task_id, urls = summary["apikley_task_id"], summary["result_urls"]
    try:
        stored = store_results(hook, task_id, urls, output_path, result_extension(summary["input"]), name)
    except (ApikleyError, OSError) as err:
        failure = err if isinstance(err, ApikleyError) else ApikleyError(f"{type(err).__name__}: {err}")
        raise failure.with_advice(
            f"Apikley task {task_id} succeeded, and its results stay at {', '.join(urls)} for about 24 hours; "
            f"only the copy to {output_path} failed."
        ) from None
    return {**summary, "stored": [item.to_dict() for item in stored]}
