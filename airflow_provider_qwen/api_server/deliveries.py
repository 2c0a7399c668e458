"""
What the callback receiver remembers, in Airflow's metadata database.

Two small tables, shared by every api-server process and kept across restarts: the callback
signatures accepted in the last minutes (so a replay is refused wherever it lands) and the finished
tasks already recorded per asset (so concurrent or repeated deliveries of one task record one Asset
event). Both rely on a primary key, which every database Airflow supports enforces across
transactions, SQLite included. ``airflow db migrate`` creates them (see
:mod:`airflow_provider_qwen.api_server.db_manager`); nothing here changes their schema. Each table
forgets its old rows as it takes new ones: ``airflow db clean`` cleans a fixed list of Airflow's
own tables, and has no place for a provider's.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table, delete, insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from airflow.configuration import conf
from airflow.utils.session import create_session

#: How long a recorded task is remembered by default: a redelivery after that records a new event.
RECORDED_TASK_DAYS_OPTION, DEFAULT_RECORDED_TASK_DAYS = "recorded_task_retention_days", 30

metadata = MetaData()

accepted_signatures = Table(
    "apikley_callback_signature",
    metadata,
    Column("signature_sha256", String(64), primary_key=True),
    Column("accepted_at", Float, nullable=False, index=True),
)

recorded_tasks = Table(
    "apikley_recorded_task",
    metadata,
    Column("asset_id", Integer, primary_key=True),
    Column("apikley_task_id", String(128), primary_key=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False, index=True),
)


class DeliveriesUnavailable(RuntimeError):
    """The receiver's tables cannot be used: missing (``airflow db migrate`` not run) or the database failed."""

    def __init__(self, err: SQLAlchemyError) -> None:
        super().__init__(
            f"the Apikley callback tables cannot be used ({type(err).__name__}); "
            "run `airflow db migrate` with the provider installed if they do not exist"
        )


def remember_signature(signature: str, forget_before: float) -> bool:
    """
    Record an accepted callback signature; forget those accepted before ``forget_before``.

    :return: ``False`` when the signature was accepted before (a replay).
    :raises DeliveriesUnavailable: when the table cannot be written.
    """
    digest = hashlib.sha256(signature.encode()).hexdigest()
    now = datetime.now(UTC).timestamp()
    try:
        with create_session(scoped=False) as session:
            session.execute(insert(accepted_signatures).values(signature_sha256=digest, accepted_at=now))
            session.execute(delete(accepted_signatures).where(accepted_signatures.c.accepted_at < forget_before))
    except IntegrityError:
        return False
    except SQLAlchemyError as err:
        raise DeliveriesUnavailable(err) from err
    return True


def claim_task(session: Session, asset_id: int, apikley_task_id: str) -> None:
    """
    Mark the task as recorded for the asset, in ``session``'s transaction.

    Tasks recorded more than ``[apikley] recorded_task_retention_days`` ago are forgotten.

    :raises IntegrityError: when it was marked before, by this or any other process; a concurrent
        delivery waits here until the first one's transaction ends.
    """
    now = datetime.now(UTC)
    days = conf.getint("apikley", RECORDED_TASK_DAYS_OPTION, fallback=DEFAULT_RECORDED_TASK_DAYS)
    session.execute(insert(recorded_tasks).values(asset_id=asset_id, apikley_task_id=apikley_task_id, recorded_at=now))
    session.execute(delete(recorded_tasks).where(recorded_tasks.c.recorded_at < now - timedelta(days=days)))
