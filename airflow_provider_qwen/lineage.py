"""
OpenLineage for an edit: the source image in, the results out, the Apikley task as the run's query.

OpenLineage is optional: without ``apache-airflow-providers-openlineage`` there is no lineage, and
nothing here is imported until a lineage listener asks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.common.compat.sdk import BaseOperator
    from airflow.providers.openlineage.extractors import OperatorLineage

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
    outputs = [item["uri"] for item in summary.get("stored", [])] or summary.get("result_urls", [])
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
