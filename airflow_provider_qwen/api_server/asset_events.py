"""Recording a finished Apikley task as an Asset event, once, in the api-server's database."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from airflow.models.asset import AssetModel
from airflow.utils.session import create_session

from airflow_provider_qwen import _compat as compat
from airflow_provider_qwen.api_server.deliveries import (
    DeliveriesUnavailable,
    claim_task,
    spend_signature,
    task_claimed,
)
from airflow_provider_qwen.api_server.signing import CheckedSignature

#: The asset a callback updates when its URL names none: one per model.
DEFAULT_ASSET_URI_TEMPLATE = "apikley://{model}"


class UnknownAsset(LookupError):
    """No DAG declares the asset, so Airflow does not know it."""


def default_asset_uri(model: str) -> str:
    """Return the asset updated for tasks of ``model`` unless the callback URL names another."""
    return DEFAULT_ASSET_URI_TEMPLATE.format(model=model)


class Outcome(Enum):
    """What became of a delivery of a finished task."""

    #: An event was recorded, and the delivery's signature spent with it.
    RECORDED = "recorded"
    #: The task was recorded for the asset before, by another delivery: only the signature was spent.
    ALREADY_RECORDED = "already recorded"
    #: The delivery's signature was spent before: a replay of a recorded delivery, nothing changed.
    REPLAYED = "replayed"
    #: No DAG uses the model's default asset, so there was nothing to record: only the signature was spent.
    NO_CONSUMER = "no consumer"


class _ClaimedMeanwhile(Exception):
    """Another delivery of the task claimed it between this one's look and its claim."""


def record_finished_task(
    asset_uri: str,
    extra: dict[str, Any],
    signature: CheckedSignature | None = None,
    teams: set[str] | None = None,
    asset_named: bool = True,
) -> Outcome:
    """
    Record an event of ``asset_uri`` for a finished task, unless one was recorded already.

    The delivery's signature is spent, and the task claimed for the asset, in the transaction that
    records the event or finds the task recorded already: two deliveries of one task at once, to
    any api-server process, record one event; a delivery answered either way cannot be replayed;
    and a delivery that meets a fault spends nothing.

    :param extra: the event's extra; its ``apikley_task_id`` identifies the task.
    :param signature: the delivery's signature, ``None`` for an unsigned one.
    :param teams: under ``[core] multi_team``, the teams the event comes from (the connection's).
    :param asset_named: the callback URL named ``asset_uri``; when it did not (the model's default
        asset), an asset no DAG uses is :attr:`Outcome.NO_CONSUMER`, not an error: the delivery
        served the tasks waiting for it.
    :return: whether an event was recorded, and if not, why.
    :raises UnknownAsset: when no DAG uses ``asset_uri`` and the URL named it.
    :raises DeliveriesUnavailable: when the receiver's tables cannot be used.
    """
    for _ in range(2):
        try:
            return _record_once(asset_uri, extra, signature, teams, asset_named)
        except _ClaimedMeanwhile:
            continue  # the claim in the way is committed (a conflicting insert waits for that): the next look sees it
    return Outcome.ALREADY_RECORDED


def _record_once(
    asset_uri: str, extra: dict[str, Any], signature: CheckedSignature | None, teams: set[str] | None, asset_named: bool
) -> Outcome:
    task_id = extra["apikley_task_id"]
    step = "spend"
    # Airflow's listeners hear of the event once it is committed, never of one rolled back (3.3+).
    after_commit: list[Callable[[], None]] = []
    try:
        with create_session(scoped=False) as session:
            asset = session.scalar(select(AssetModel).where(AssetModel.uri == asset_uri))
            if asset is None and asset_named:
                raise UnknownAsset(asset_uri)
            if signature is not None:
                spend_signature(session, signature.value, signature.forget_before)
            if asset is None:
                return Outcome.NO_CONSUMER
            if task_claimed(session, asset.id, task_id):
                return Outcome.ALREADY_RECORDED  # and the signature spent with this answer
            step = "claim"
            claim_task(session, asset.id, task_id)
            step = "register"
            # The task id is the event's partition: a consumer on a partitioned schedule (Airflow 3.2+)
            # runs once per edit.
            compat.register_asset_change(
                asset=asset,
                extra=extra,
                session=session,
                partition_key=task_id,
                teams=teams,
                callback_sink=after_commit,
            )
    except IntegrityError as err:
        if step == "spend":
            return Outcome.REPLAYED
        if step == "claim":
            raise _ClaimedMeanwhile from err
        raise DeliveriesUnavailable(err) from err
    except SQLAlchemyError as err:
        raise DeliveriesUnavailable(err) from err
    for notify in after_commit:
        notify()
    return Outcome.RECORDED
