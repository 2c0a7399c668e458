"""
The create pace's ledger, in Airflow's metadata database: when each connection's next create may go.

Apikley counts creates per account in a sliding window, whichever worker sends them. So that tasks
on many workers stay under it together, each takes a slot here right before its create: the
connection's slots are handed out one after the other, :func:`slot_spacing` apart, however many
api-server processes answer. Two small tables (``airflow db migrate`` creates them, see
:mod:`airflow_provider_qwen.api_server.db_manager`):

- ``apikley_create_pace``: one row per connection, with the time its next slot opens.
- ``apikley_create_slot``: each slot handed out, by the request that asked for it, so a request
  sent again (its answer lost, or replayed) gets the slot it got the first time instead of
  pushing the pace further. A slot is forgotten :data:`SLOT_MEMORY_SECONDS` after it was handed
  out, when its connection takes another: by then a signed request naming it is stale anyway.

A slot is taken under its connection's row lock (an ``UPDATE`` of the row, then ``SELECT ... FOR
UPDATE``: a row lock on PostgreSQL and MySQL; on SQLite the first write of a transaction holds the
whole database's write lock), so no two requests get the same slot. Times are the api-server's
clock (Unix seconds); a task is told how long to wait, never a time to compare with its own clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Column, Float, String, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from airflow.utils.session import create_session

from airflow_provider_qwen.api_server.deliveries import metadata
from airflow_provider_qwen.api_server.signed_requests import MAX_AGE_SECONDS

#: The spacing's margin over the bare ``window / creates``: with creates exactly that far apart, one
#: create that reached Apikley a little late and the one a window after it that did not would meet in
#: one window. 5% leaves half a second a window at Apikley's default (20 per 10 s) for that.
SPACING_MARGIN = 0.05
#: Seconds a handed-out slot is remembered: a signed request naming it is stale by then, wherever its
#: timestamp lay within :data:`~airflow_provider_qwen.api_server.signed_requests.MAX_AGE_SECONDS`.
SLOT_MEMORY_SECONDS = 2 * MAX_AGE_SECONDS

#: Unix seconds, sub-second: double precision on every database (MySQL's bare FLOAT is single
#: precision, which would round today's time to minutes).
SECONDS = Float(precision=53)

paces = Table(
    "apikley_create_pace",
    metadata,
    Column("conn_id", String(250), primary_key=True),
    Column("next_slot_at", SECONDS, nullable=False),
    Column("touched_at", SECONDS, nullable=False),
)

slots = Table(
    "apikley_create_slot",
    metadata,
    Column("conn_id", String(250), primary_key=True),
    Column("request_id", String(32), primary_key=True),
    Column("slot_at", SECONDS, nullable=False),
    Column("reserved_at", SECONDS, nullable=False, index=True),
)


class PaceUnavailable(RuntimeError):
    """The pace's tables cannot be used: missing (``airflow db migrate`` not run) or the database failed."""

    def __init__(self, err: SQLAlchemyError) -> None:
        super().__init__(
            f"the Apikley create pace tables cannot be used ({type(err).__name__}); "
            "run `airflow db migrate` with the provider installed if they do not exist"
        )


@dataclass(frozen=True)
class Slot:
    """
    A create slot handed out.

    :param at: when the create may go (the api-server's clock, Unix seconds).
    :param spacing: seconds between two of the connection's slots.
    """

    at: float
    spacing: float


def slot_spacing(creates_per_window: int, window_seconds: float) -> float:
    """Return the seconds between two slots of a connection that may create ``creates_per_window`` per window."""
    return window_seconds / creates_per_window * (1 + SPACING_MARGIN)


def reserve_slot(conn_id: str, request_id: str, spacing: float) -> Slot:
    """
    Hand out ``conn_id``'s next create slot to ``request_id``.

    The slot is now when the connection's pace is idle, else ``spacing`` after the slot before. A
    ``request_id`` that was handed a slot already gets that slot again, and moves nothing.

    :param spacing: seconds until the connection's slot after this one.
    :raises PaceUnavailable: when the tables cannot be used.
    """
    try:
        _ensure_pace(conn_id)
        with create_session(scoped=False) as session:
            next_slot_at = _lock(session, conn_id)
            now = time.time()  # read once the lock is held: a wait for it must not make the slot early
            earlier = session.scalar(
                select(slots.c.slot_at).where(slots.c.conn_id == conn_id, slots.c.request_id == request_id)
            )
            if earlier is not None:
                return Slot(earlier, spacing)
            slot_at = max(now, next_slot_at)
            session.execute(update(paces).where(paces.c.conn_id == conn_id).values(next_slot_at=slot_at + spacing))
            session.execute(
                insert(slots).values(conn_id=conn_id, request_id=request_id, slot_at=slot_at, reserved_at=now)
            )
            # only this connection's rows, which its lock guards: no two connections' requests wait on each other
            session.execute(
                delete(slots).where(slots.c.conn_id == conn_id, slots.c.reserved_at < now - SLOT_MEMORY_SECONDS)
            )
            return Slot(slot_at, spacing)
    except SQLAlchemyError as err:
        raise PaceUnavailable(err) from err


def _ensure_pace(conn_id: str) -> None:
    """Make the connection's row, idle, if it has none."""
    with create_session(scoped=False) as session:
        if session.scalar(select(paces.c.conn_id).where(paces.c.conn_id == conn_id)) is not None:
            return
    try:
        with create_session(scoped=False) as session:
            session.execute(insert(paces).values(conn_id=conn_id, next_slot_at=0.0, touched_at=time.time()))
    except IntegrityError:
        pass  # made by a concurrent request meanwhile


def _lock(session: Session, conn_id: str) -> float:
    """Take the connection's lock for the rest of ``session``'s transaction; return when its next slot opens."""
    # The UPDATE comes first: on SQLite it is what takes the write lock before anything is read.
    session.execute(update(paces).where(paces.c.conn_id == conn_id).values(touched_at=time.time()))
    locked = select(paces.c.next_slot_at).where(paces.c.conn_id == conn_id).with_for_update()
    return float(session.execute(locked).scalar_one())
