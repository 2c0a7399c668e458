"""Recording a finished Apikley task as an Asset event, once, in the api-server's database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from airflow.assets.manager import asset_manager
from airflow.models.asset import AssetEvent, AssetModel
from airflow.utils.session import create_session
from airflow.utils.sqlalchemy import with_row_locks

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: The asset a callback updates when its URL names none: one per model.
DEFAULT_ASSET_URI_TEMPLATE = "apikley://{model}"
#: How far back a delivered task is looked for before an event is recorded again.
DUPLICATE_LOOKBACK = timedelta(days=7)


class UnknownAsset(LookupError):
    """No DAG declares the asset, so Airflow does not know it."""


def default_asset_uri(model: str) -> str:
    """The asset updated for tasks of ``model`` unless the callback URL names another."""
    return DEFAULT_ASSET_URI_TEMPLATE.format(model=model)


def record_finished_task(asset_uri: str, extra: dict[str, Any]) -> bool:
    """
    Record an event of ``asset_uri`` for a finished task, unless one was recorded already.

    The asset's row is locked while looking, so two deliveries of the same task at once record
    one event.

    :param extra: the event's extra; its ``apikley_task_id`` identifies the task.
    :return: whether an event was recorded (``False``: the task was delivered before).
    :raises UnknownAsset: when no DAG uses ``asset_uri``.
    """
    task_id = extra["apikley_task_id"]
    with create_session(scoped=False) as session:
        asset = session.scalar(with_row_locks(select(AssetModel).where(AssetModel.uri == asset_uri), session))
        if asset is None:
            raise UnknownAsset(asset_uri)
        if _already_recorded(session, asset, task_id):
            return False
        # The task id is the event's partition: a consumer on a partitioned schedule (Airflow 3.2+)
        # runs once per edit. Airflow 3.1 ignores it.
        asset_manager.register_asset_change(asset=asset, extra=extra, session=session, partition_key=task_id)
        return True


def _already_recorded(session: Session, asset: AssetModel, apikley_task_id: str) -> bool:
    since = datetime.now(UTC) - DUPLICATE_LOOKBACK
    extras = session.scalars(
        select(AssetEvent.extra).where(AssetEvent.asset_id == asset.id, AssetEvent.timestamp >= since)
    )
    return any((extra or {}).get("apikley_task_id") == apikley_task_id for extra in extras)
