"""
An edit's results copied to the user's storage, for each place an edit ends.

Above both the hook (which downloads) and :mod:`airflow_provider_qwen.storage` (which names, checks
and writes): the operators, the sensor and the triggers call it alike, so every path stores the same
files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_qwen.exceptions import ApikleyError
from airflow_provider_qwen.storage import StoredFile, as_folder, result_destination, result_extension

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    from airflow_provider_qwen.hooks.apikley import ApikleyHook


def store_results(
    hook: ApikleyHook,
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
    hook: ApikleyHook, summary: dict[str, Any], output_path: str | ObjectStoragePath
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
