"""
What the callback receiver remembers, in Airflow's metadata database.

Three small tables, shared by every api-server process and kept across restarts: the signatures
of the callbacks taken (so a replay is refused wherever it lands), the finished tasks already
recorded per asset (so concurrent or repeated deliveries of one task record one Asset event), and
what Apikley said of each delivered task, for the triggers waiting for it (see
:mod:`~airflow_provider_qwen.api_server.awaited`). A delivery spends its signature and claims its
task in the transaction that records its event (or that finds the task recorded already): a
delivery that records nothing (the task still running, a fault) leaves both as they were, so the
same delivery sent again can still be recorded. All rely on a primary key, which every database
Airflow supports enforces across transactions, SQLite included. ``airflow db migrate`` creates them
(see :mod:`airflow_provider_qwen.api_server.db_manager`); nothing here changes their schema. Each
table forgets its old rows as it takes new ones: ``airflow db clean`` cleans a fixed list of
Airflow's own tables, and has no place for a provider's.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, delete, exists, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from airflow.configuration import conf
from airflow.utils.session import create_session
from airflow.utils.sqlalchemy import UtcDateTime

from airflow_provider_qwen.redaction import shown_setting

log = logging.getLogger(__name__)

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
    Column("recorded_at", UtcDateTime, nullable=False, index=True),
)


delivered_tasks = Table(
    "apikley_delivered_task",
    metadata,
    Column("conn_id", String(250), primary_key=True),
    Column("apikley_task_id", String(128), primary_key=True),
    Column("record", Text, nullable=False),
    Column("delivered_at", Float, nullable=False, index=True),
)

#: Seconds a delivered task's record is kept for a trigger to read; a wait still going after that
#: learns of the end from its own query to Apikley.
DELIVERY_RETENTION_SECONDS = 24 * 3600
#: The largest record kept: a larger one is left for the waiting trigger to read from Apikley.
MAX_DELIVERED_RECORD_BYTES = 64 * 1024


class DeliveriesUnavailable(RuntimeError):
    """The receiver's tables cannot be used: missing (``airflow db migrate`` not run) or the database failed."""

    def __init__(self, err: SQLAlchemyError) -> None:
        super().__init__(
            f"the Apikley callback tables cannot be used ({type(err).__name__}); "
            "run `airflow db migrate` with the provider installed if they do not exist"
        )


def _digest(signature: str) -> str:
    return hashlib.sha256(signature.encode()).hexdigest()


def signature_spent(signature: str) -> bool:
    """
    Return whether a delivery with this callback signature was taken already.

    :raises DeliveriesUnavailable: when the table cannot be read.
    """
    try:
        with create_session(scoped=False) as session:
            spent = exists().where(accepted_signatures.c.signature_sha256 == _digest(signature))
            return bool(session.scalar(select(spent)))
    except SQLAlchemyError as err:
        raise DeliveriesUnavailable(err) from err


def spend_signature(session: Session, signature: str, forget_before: float) -> None:
    """
    Spend a callback signature in ``session``'s transaction; forget those spent before ``forget_before``.

    :raises IntegrityError: when it was spent before, by this or any other process; a concurrent
        delivery with the same signature waits here until the first one's transaction ends.
    """
    now = datetime.now(UTC).timestamp()
    session.execute(insert(accepted_signatures).values(signature_sha256=_digest(signature), accepted_at=now))
    session.execute(delete(accepted_signatures).where(accepted_signatures.c.accepted_at < forget_before))


def recorded_task_retention_days() -> int:
    """
    Return ``[apikley] recorded_task_retention_days``; its default, with an error logged, for a value below 1.

    A value below 1 would forget a task as soon as it is claimed, and a repeated delivery would
    record it again; a value that is not a whole number is refused the same way.
    """
    value = conf.get("apikley", RECORDED_TASK_DAYS_OPTION, fallback=str(DEFAULT_RECORDED_TASK_DAYS))
    try:
        days = int(value)
    except ValueError:
        days = 0
    if days < 1:
        log.error(
            "[apikley] %s is not a whole number of days of at least 1; using the default, %d",
            shown_setting(RECORDED_TASK_DAYS_OPTION, value),
            DEFAULT_RECORDED_TASK_DAYS,
        )
        return DEFAULT_RECORDED_TASK_DAYS
    return days


def task_claimed(session: Session, asset_id: int, apikley_task_id: str) -> bool:
    """Return whether the task is marked as recorded for the asset, as ``session``'s transaction sees it."""
    claimed = exists().where(recorded_tasks.c.asset_id == asset_id, recorded_tasks.c.apikley_task_id == apikley_task_id)
    return bool(session.scalar(select(claimed)))


def claim_task(session: Session, asset_id: int, apikley_task_id: str) -> None:
    """
    Mark the task as recorded for the asset, in ``session``'s transaction.

    Tasks recorded more than ``[apikley] recorded_task_retention_days`` ago are forgotten.

    :raises IntegrityError: when it was marked before, by this or any other process; a concurrent
        delivery waits here until the first one's transaction ends.
    """
    now = datetime.now(UTC)
    days = recorded_task_retention_days()
    session.execute(insert(recorded_tasks).values(asset_id=asset_id, apikley_task_id=apikley_task_id, recorded_at=now))
    session.execute(delete(recorded_tasks).where(recorded_tasks.c.recorded_at < now - timedelta(days=days)))


class DeliveryBell:
    """
    Wakes the waits of this process for a task's delivery (on their event loops) as soon as it is kept here.

    Only the waits for that task of that connection wake, so a burst of callbacks costs each wait
    no more than its own. A delivery kept by another api-server process rings no bell here: a wait
    also reads the table every :data:`~airflow_provider_qwen.api_server.awaited.RECHECK_SECONDS`.
    """

    def __init__(self) -> None:
        self._listening: dict[tuple[str, str], set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def listening(self, conn_id: str, apikley_task_ids: Iterable[str]) -> Iterator[asyncio.Event]:
        """Return an event set when one of the tasks is kept, until the block ends; call it on an event loop."""
        heard = (asyncio.get_running_loop(), asyncio.Event())
        keys = [(conn_id, task_id) for task_id in apikley_task_ids]
        with self._lock:
            for key in keys:
                self._listening.setdefault(key, set()).add(heard)
        try:
            yield heard[1]
        finally:
            with self._lock:
                for key in keys:
                    waits = self._listening.get(key)
                    if waits is not None:
                        waits.discard(heard)
                        if not waits:
                            del self._listening[key]

    def ring(self, conn_id: str, apikley_task_id: str) -> None:
        """Wake the waits for the task, from any thread."""
        with self._lock:
            listening = list(self._listening.get((conn_id, apikley_task_id), ()))
        for loop, event in listening:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # its loop closed meanwhile
                continue


#: Rung when this process keeps a delivery.
DELIVERY_BELL = DeliveryBell()


def keep_delivery(conn_id: str, apikley_task_id: str, record_json: str) -> bool:
    """
    Keep what Apikley said of a finished task, delivered through ``conn_id``, for the triggers waiting for it.

    Kept once: a repeated delivery leaves the first record. Records older than
    :data:`DELIVERY_RETENTION_SECONDS` are forgotten.

    :param record_json: the task's record as JSON; one over :data:`MAX_DELIVERED_RECORD_BYTES` is not kept.
    :return: whether this call kept it.
    :raises DeliveriesUnavailable: when the table cannot be used.
    """
    if len(record_json.encode()) > MAX_DELIVERED_RECORD_BYTES:
        log.warning(
            "Apikley task %s: its record is too large to keep for waiting tasks; they ask Apikley", apikley_task_id
        )
        return False
    now = time.time()
    row = {"conn_id": conn_id, "apikley_task_id": apikley_task_id, "record": record_json, "delivered_at": now}
    try:
        with create_session(scoped=False) as session:
            session.execute(
                delete(delivered_tasks).where(delivered_tasks.c.delivered_at < now - DELIVERY_RETENTION_SECONDS)
            )
            kept = exists().where(
                delivered_tasks.c.conn_id == conn_id, delivered_tasks.c.apikley_task_id == apikley_task_id
            )
            if session.scalar(select(kept)):
                return False
            session.execute(insert(delivered_tasks).values(**row))
    except IntegrityError:
        return False  # another delivery of the task kept it meanwhile
    except SQLAlchemyError as err:
        raise DeliveriesUnavailable(err) from err
    DELIVERY_BELL.ring(conn_id, apikley_task_id)
    return True


def read_deliveries(conn_id: str, apikley_task_ids: Iterable[str]) -> dict[str, str]:
    """
    Return the kept records (as JSON) of those of ``apikley_task_ids`` delivered through ``conn_id``.

    :raises DeliveriesUnavailable: when the table cannot be read.
    """
    wanted = list(apikley_task_ids)
    if not wanted:
        return {}
    query = select(delivered_tasks.c.apikley_task_id, delivered_tasks.c.record).where(
        delivered_tasks.c.conn_id == conn_id, delivered_tasks.c.apikley_task_id.in_(wanted)
    )
    try:
        with create_session(scoped=False) as session:
            return {task_id: record for task_id, record in session.execute(query)}
    except SQLAlchemyError as err:
        raise DeliveriesUnavailable(err) from err
