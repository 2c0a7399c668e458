"""
An edit's results copied to the user's storage, for each place an edit ends.

Above :mod:`airflow_provider_qwen.storage` (which names, checks and writes), and using the hook
(which downloads) through :class:`ResultDownloader` only: the operators, the sensor and the triggers
call it alike, so every path stores the same files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_qwen.exceptions import ApikleyError
from airflow_provider_qwen.storage import StoredFile, as_folder, result_destination, result_extension

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


def store_results(
    hook: ResultDownloader,
    apikley_task_id: str,
    result_urls: Sequence[str],
    folder: str | ObjectStoragePath,
    extension: str = "png",
) -> list[StoredFile]:
    """
    Copy every result of a task into ``folder``, each as ``<apikley_task_id>-<n>.<extension>``.

    :param hook: downloads each result (see :meth:`ApikleyHook.download_result`).
    :raises ApikleyBadResponseError: when the task id is not shaped like one (it names the files).
    """
    folder = as_folder(folder)
    stored = [
        hook.download_result(url, result_destination(folder, apikley_task_id, index, extension))
        for index, url in enumerate(result_urls)
    ]
    for item in stored:
        hook.log.info("Stored %s (%d bytes, sha256 %s)", item.uri, item.size, item.sha256)
    return stored


def with_stored_results(
    hook: ResultDownloader, summary: dict[str, Any], output_path: str | ObjectStoragePath
) -> dict[str, Any]:
    """
    ``summary`` (an edit's XCom value) with ``stored``: its results copied into ``output_path``.

    :raises ApikleyError: when a copy fails, naming the paid task and where its results still are.
    """
    task_id, urls = summary["apikley_task_id"], summary["result_urls"]
    try:
        stored = store_results(hook, task_id, urls, output_path, result_extension(summary["input"]))
    except (ApikleyError, OSError) as err:
        failure = err if isinstance(err, ApikleyError) else ApikleyError(f"{type(err).__name__}: {err}")
        raise failure.with_advice(
            f"Apikley task {task_id} succeeded, and its results stay at {', '.join(urls)} for about 24 hours; "
            f"only the copy to {output_path} failed."
        ) from None
    return {**summary, "stored": [item.to_dict() for item in stored]}
