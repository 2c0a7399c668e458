"""
What the callback receiver remembers, in Airflow's metadata database.

Two small tables, created on first use, shared by every api-server process and kept across
restarts: the callback signatures accepted in the last minutes (so a replay is refused wherever it
lands) and the finished tasks already recorded per asset (so concurrent or repeated deliveries of
one task record one Asset event). Both rely on a primary key, which every database Airflow supports
enforces across transactions, SQLite included.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table, delete, insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from airflow.utils.session import create_session

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
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

_tables_ready = False
_tables_lock = threading.Lock()


def ensure_tables(session: Session) -> None:
    """
    Create the receiver's tables once per process, if they do not exist yet.

    Call it before ``session`` writes anything: the tables are created through another connection.
    """
    global _tables_ready
    if _tables_ready:
        return
    with _tables_lock:
        if _tables_ready:
            return
        engine = session.get_bind()
        try:
            metadata.create_all(engine, checkfirst=True)
        except SQLAlchemyError:
            # another process created them between the check and the CREATE
            metadata.create_all(engine, checkfirst=True)
        _tables_ready = True


def remember_signature(signature: str, forget_before: float) -> bool:
    """
    Record an accepted callback signature; forget those accepted before ``forget_before``.

    :return: ``False`` when the signature was accepted before (a replay).
    """
    digest = hashlib.sha256(signature.encode()).hexdigest()
    now = datetime.now(UTC).timestamp()
    try:
        with create_session(scoped=False) as session:
            ensure_tables(session)
            session.execute(insert(accepted_signatures).values(signature_sha256=digest, accepted_at=now))
            session.execute(delete(accepted_signatures).where(accepted_signatures.c.accepted_at < forget_before))
    except IntegrityError:
        return False
    return True


def claim_task(session: Session, asset_id: int, apikley_task_id: str) -> None:
    """
    Mark the task as recorded for the asset, in ``session``'s transaction (after :func:`ensure_tables`).

    :raises IntegrityError: when it was marked before, by this or any other process; a concurrent
        delivery waits here until the first one's transaction ends.
    """
    session.execute(
        insert(recorded_tasks).values(asset_id=asset_id, apikley_task_id=apikley_task_id, recorded_at=datetime.now(UTC))
    )
