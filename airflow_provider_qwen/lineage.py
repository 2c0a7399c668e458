"""
What an edit tells the rest of Airflow it changed: OpenLineage and the extra of its asset events.

For OpenLineage the source image goes in, the results out, and the Apikley task is the run's query.
OpenLineage is optional: without ``apache-airflow-providers-openlineage`` there is no lineage, and
nothing of it is imported until a lineage listener asks.

Each ``Asset`` among a task's ``outlets`` gets, in its event's extra, where the results are
(:func:`outlet_extra`), so a DAG scheduled on the asset knows what changed without reading a file a
later task writes. Airflow records those events only when a worker ends the task, which the
operators see to (see ``end_in_triggerer``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.common.compat.sdk import BaseOperator
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

#: The ``source`` of the run facet that carries the Apikley task id.
LINEAGE_SOURCE = "apikley"


def dataset_for(uri: str) -> Dataset:
    """
    Return the OpenLineage dataset of a file URI, named the OpenLineage way.

    ``https://host/path`` is namespace ``https://host``, name ``path``; ``s3://bucket/key`` is
    ``s3://bucket`` and ``key``; ``file:///path`` is ``file`` and ``/path``.
    """
    from airflow.providers.common.compat.openlineage.facet import Dataset

    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return Dataset(namespace="file", name=parts.path or uri)
    return Dataset(namespace=f"{parts.scheme}://{parts.netloc}", name=parts.path.lstrip("/") or "/")


#: The most URIs an asset event's extra lists; ``result_uris_left_off`` counts the rest.
MAX_EVENT_URIS = 50


def result_uris(summary: dict[str, Any]) -> list[str]:
    """Return where an edit's results are: their copies in ``output_path`` when made, else Apikley's (expiring) URLs."""
    return [item["uri"] for item in summary.get("stored", [])] or list(summary.get("result_urls", []))


def outlet_extra(*, uris: list[str] | None = None, manifest_uri: str | None = None, **more: Any) -> dict[str, Any]:
    """
    Return the extra of an edit's asset events, small whatever the number of results.

    :param uris: where the results are (see :func:`result_uris`): the first :data:`MAX_EVENT_URIS`
        go in as ``result_uris``, and ``result_uris_left_off`` says how many more there were.
    :param manifest_uri: a large batch's manifest, which lists every item, as ``manifest_uri``.
    :param more: other keys, such as ``apikley_task_id``.
    """
    extra: dict[str, Any] = dict(more)
    if manifest_uri is not None:
        extra["manifest_uri"] = manifest_uri
    if uris is not None:
        extra["result_uris"] = uris[:MAX_EVENT_URIS]
        if len(uris) > MAX_EVENT_URIS:
            extra["result_uris_left_off"] = len(uris) - MAX_EVENT_URIS
    return extra


def add_outlet_extra(context: Context | None, outlets: list[Any], extra: dict[str, Any]) -> None:
    """
    Put ``extra`` in the event of each ``Asset`` in ``outlets`` that the ending task records.

    An ``AssetAlias`` is left alone: its events name their asset, which only the DAG's author knows
    (``outlet_events[alias].add(asset, extra=...)`` in a task of their own).
    """
    events = context.get("outlet_events") if context is not None else None
    if events is None or not outlets:
        return
    from airflow.providers.common.compat.sdk import Asset

    for outlet in outlets:
        if isinstance(outlet, Asset):
            events[outlet].extra.update(extra)


def edit_lineage(summary: dict[str, Any]) -> OperatorLineage | None:
    """
    Return the lineage of one edit from the operator's result, or ``None`` when OpenLineage is not installed.

    Outputs are the copies in the user's storage when the operator made them, else Apikley's
    result URLs (which expire).
    """
    try:
        from airflow.providers.common.compat.openlineage.facet import ExternalQueryRunFacet
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:
        return None
    image_url = summary.get("input", {}).get("image_url")
    outputs = result_uris(summary)
    return OperatorLineage(
        inputs=[dataset_for(image_url)] if image_url else [],
        outputs=[dataset_for(uri) for uri in outputs],
        run_facets={
            "externalQuery": ExternalQueryRunFacet(externalQueryId=summary["apikley_task_id"], source=LINEAGE_SOURCE)
        },
    )


def lineage_expected(operator: BaseOperator) -> bool:
    """
    Whether OpenLineage's listener will ask ``operator`` for its facets when it ends on a worker.

    ``False`` when the provider is not installed or OpenLineage is disabled (no transport, or
    ``[openlineage] disabled``), when the operator is in ``disabled_for_operators``, or when
    ``selective_enable`` is on and the task was not enabled: the same decision as OpenLineage's
    own ``is_selective_lineage_enabled`` and ``is_operator_disabled``, without importing its
    utilities, which take about a second in every task process.
    """
    try:
        from airflow.providers.openlineage import conf
    except ImportError:
        return False
    if conf.is_disabled() or f"{type(operator).__module__}.{type(operator).__name__}" in conf.disabled_operators():
        return False
    if not conf.selective_enable():
        return True
    from airflow.providers.openlineage.utils.selective_enable import is_task_lineage_enabled

    return is_task_lineage_enabled(operator)
