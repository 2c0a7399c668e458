"""Recording a finished Apikley task as an Asset event, once, in the api-server's database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from airflow.models.asset import AssetModel
from airflow.utils.session import create_session

from airflow_provider_qwen import _compat as compat
from airflow_provider_qwen.api_server.deliveries import DeliveriesUnavailable, claim_task

#: The asset a callback updates when its URL names none: one per model.
DEFAULT_ASSET_URI_TEMPLATE = "apikley://{model}"


class UnknownAsset(LookupError):
    """No DAG declares the asset, so Airflow does not know it."""


def default_asset_uri(model: str) -> str:
    """Return the asset updated for tasks of ``model`` unless the callback URL names another."""
    return DEFAULT_ASSET_URI_TEMPLATE.format(model=model)


def record_finished_task(asset_uri: str, extra: dict[str, Any]) -> bool:
    """
    Record an event of ``asset_uri`` for a finished task, unless one was recorded already.

    The task is claimed for the asset in the same transaction that records the event, so two
    deliveries of one task at once, to any api-server process, record one event.

    :param extra: the event's extra; its ``apikley_task_id`` identifies the task.
    :return: whether an event was recorded (``False``: the task was delivered before).
    :raises UnknownAsset: when no DAG uses ``asset_uri``.
    :raises DeliveriesUnavailable: when the receiver's tables cannot be used.
    """
    task_id = extra["apikley_task_id"]
    claimed = False
    try:
        with create_session(scoped=False) as session:
            asset = session.scalar(select(AssetModel).where(AssetModel.uri == asset_uri))
            if asset is None:
                raise UnknownAsset(asset_uri)
            claim_task(session, asset.id, task_id)
            claimed = True
            # The task id is the event's partition: a consumer on a partitioned schedule (Airflow 3.2+)
            # runs once per edit.
            compat.register_asset_change(asset=asset, extra=extra, session=session, partition_key=task_id)
    except IntegrityError as err:
        if claimed:
            raise DeliveriesUnavailable(err) from err
        return False
    except SQLAlchemyError as err:
        raise DeliveriesUnavailable(err) from err
    return True
