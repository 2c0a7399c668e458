"""
The run budgets' ledger, in Airflow's metadata database: what each run's edits reserved and spent.

Four small tables beside the callback receiver's (``airflow db migrate`` creates them, see
:mod:`airflow_provider_qwen.api_server.db_manager`):

- ``apikley_budget``: one row per budget, keyed by a digest of its connection, DAG, run and name.
- ``apikley_budget_reservation``: what an edit (or a burst of a batch's edits) reserved before
  being submitted: how many edits and their expected credits, and when it was settled.
- ``apikley_budget_task``: what each Apikley task of the budget was charged, counted once
  whichever try or task reports it.
- ``apikley_model_cost``: per connection and model, what Apikley last charged for a successful
  edit: the expected cost of the next one.

Every change to a budget first takes its row's lock (an ``UPDATE`` of it, then ``SELECT ... FOR
UPDATE``: a row lock on PostgreSQL and MySQL; on SQLite the first write of a transaction holds the
whole database's write lock), so the reservations of one budget are decided one at a time, by
every api-server process alike. A budget is forgotten :data:`BUDGET_RETENTION_DAYS` after it was
made, with its rows, as new ones are made.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

from sqlalchemy import Column, Float, Integer, String, Table, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from airflow.utils.session import create_session

from airflow_provider_qwen.api_server.deliveries import metadata
from airflow_provider_qwen.budget import DEFAULT_EDIT_CREDITS, BudgetState

#: Days a budget and its rows are kept after it was made.
BUDGET_RETENTION_DAYS = 30

budgets = Table(
    "apikley_budget",
    metadata,
    Column("budget_key", String(64), primary_key=True),
    Column("conn_id", String(250), nullable=False),
    Column("dag_id", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("name", String(100), nullable=False),
    Column("created_at", Float, nullable=False, index=True),
    Column("touched_at", Float, nullable=False),
)

reservations = Table(
    "apikley_budget_reservation",
    metadata,
    Column("budget_key", String(64), primary_key=True),
    Column("reservation_key", String(64), primary_key=True),
    Column("owner_key", String(64), nullable=False, index=True),
    Column("label", String(400), nullable=False),
    Column("edits", Integer, nullable=False),
    Column("expected_credits", Float, nullable=False),
    Column("reserved_at", Float, nullable=False),
    Column("settled_at", Float, nullable=True),
)

budget_tasks = Table(
    "apikley_budget_task",
    metadata,
    Column("budget_key", String(64), primary_key=True),
    Column("apikley_task_id", String(128), primary_key=True),
    Column("credits", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("settled_at", Float, nullable=False),
)

model_costs = Table(
    "apikley_model_cost",
    metadata,
    Column("conn_id", String(250), primary_key=True),
    Column("model", String(128), primary_key=True),
    Column("credits", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)


class LedgerUnavailable(RuntimeError):
    """The ledger's tables cannot be used: missing (``airflow db migrate`` not run) or the database failed."""

    def __init__(self, err: SQLAlchemyError) -> None:
        super().__init__(
            f"the Apikley budget tables cannot be used ({type(err).__name__}); "
            "run `airflow db migrate` with the provider installed if they do not exist"
        )


class UnknownBudget(LookupError):
    """Nothing was ever reserved in the budget that a settlement names."""


@dataclass(frozen=True)
class BudgetKey:
    """
    Which budget: a run's budget of one name, for the edits of one connection.

    :param conn_id: the Apikley connection its edits are paid through.
    :param dag_id: the run's DAG.
    :param run_id: the run.
    :param name: the budget's name (``run_budget_name``), so that a run may hold more than one.
    """

    conn_id: str
    dag_id: str
    run_id: str
    name: str

    @property
    def digest(self) -> str:
        """The budget's key in the tables."""
        return _digest(json.dumps([self.conn_id, self.dag_id, self.run_id, self.name]))


@dataclass(frozen=True)
class Standing:
    """
    A budget's answer to a reservation or a settlement.

    :param spent: credits its ended edits were charged, this settlement included.
    :param in_flight: credits reserved by its edits not yet ended, this reservation not included.
    :param expected: what an edit of the model is expected to cost.
    :param granted: how many of the edits asked for were reserved (for a reservation).
    """

    spent: float
    in_flight: float
    expected: float
    granted: int = 0


@dataclass(frozen=True)
class SettledTask:
    """
    An Apikley task that ended, as a settlement reports it.

    :param apikley_task_id: the task.
    :param credits: what Apikley said it cost; ``None`` when it did not say.
    :param succeeded: whether it succeeded: a success Apikley did not price counts at the expected cost.
    """

    apikley_task_id: str
    credits: float | None
    succeeded: bool


def reserve(key: BudgetKey, limit: float, owner: str, part: str, model: str, count: int) -> Standing:
    """
    Reserve as many of ``count`` edits of ``model`` as fit in the budget, for ``owner`` (a task instance).

    The same ``owner`` and ``part`` reserved before gets the same answer, and nothing more is
    reserved: a reservation sent again (a retried request) is counted once.

    :param limit: the budget's limit in credits, as the task asking has it.
    :param part: which of the owner's reservations (its try and burst).
    :return: how many edits were reserved, what each is expected to cost, and what was spent and in flight.
    :raises LedgerUnavailable: when the tables cannot be used.
    """
    now = time.time()
    try:
        _ensure_budget(key, now)
        with create_session(scoped=False) as session:
            _lock(session, key, now)
            reservation_key = _digest(f"{owner}\n{part}")
            earlier = session.execute(
                select(reservations.c.edits).where(
                    reservations.c.budget_key == key.digest, reservations.c.reservation_key == reservation_key
                )
            ).first()
            spent, in_flight = _standing(session, key)
            expected = _expected_cost(session, key.conn_id, model)
            if earlier is not None:
                return Standing(spent, in_flight, expected, granted=earlier.edits)
            granted = BudgetState(limit, spent, in_flight).affordable(expected, count)
            if granted:
                session.execute(
                    insert(reservations).values(
                        budget_key=key.digest,
                        reservation_key=reservation_key,
                        owner_key=_digest(owner),
                        label=f"{owner}/{part}"[:400],
                        edits=granted,
                        expected_credits=granted * expected,
                        reserved_at=now,
                        settled_at=None,
                    )
                )
            return Standing(spent, in_flight, expected, granted=granted)
    except SQLAlchemyError as err:
        raise LedgerUnavailable(err) from err


def settle(key: BudgetKey, owner: str, part: str | None, model: str, tasks: list[SettledTask]) -> Standing:
    """
    Count what ``tasks`` were charged, and close ``owner``'s reservations (one ``part``, or all when ``None``).

    A task counted before, by any settlement, is not counted again. What Apikley last charged for a
    successful edit becomes the expected cost of the next edit of ``model``.

    :raises UnknownBudget: when the budget was never reserved in.
    :raises LedgerUnavailable: when the tables cannot be used.
    """
    now = time.time()
    try:
        with create_session(scoped=False) as session:
            if not _lock(session, key, now):
                raise UnknownBudget(key.digest)
            expected = _expected_cost(session, key.conn_id, model)
            reported = {task.apikley_task_id: task for task in tasks}
            counted = set(
                session.scalars(
                    select(budget_tasks.c.apikley_task_id).where(
                        budget_tasks.c.budget_key == key.digest, budget_tasks.c.apikley_task_id.in_(reported)
                    )
                )
            )
            for task in reported.values():
                if task.apikley_task_id in counted:
                    continue
                credits = task.credits if task.credits is not None else (expected if task.succeeded else 0.0)
                session.execute(
                    insert(budget_tasks).values(
                        budget_key=key.digest,
                        apikley_task_id=task.apikley_task_id,
                        credits=credits,
                        state="success" if task.succeeded else "failed",
                        settled_at=now,
                    )
                )
            closing = [reservations.c.budget_key == key.digest, reservations.c.owner_key == _digest(owner)]
            if part is not None:
                closing.append(reservations.c.reservation_key == _digest(f"{owner}\n{part}"))
            session.execute(
                update(reservations).where(*closing, reservations.c.settled_at.is_(None)).values(settled_at=now)
            )
            priced = [task.credits for task in tasks if task.succeeded and task.credits is not None]
            if priced:
                _learn_cost(session, key.conn_id, model, priced[-1], now)
            spent, in_flight = _standing(session, key)
            return Standing(spent, in_flight, _expected_cost(session, key.conn_id, model))
    except SQLAlchemyError as err:
        raise LedgerUnavailable(err) from err


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _ensure_budget(key: BudgetKey, now: float) -> None:
    """Make the budget's row if it is new, forgetting the budgets made long ago with their rows."""
    with create_session(scoped=False) as session:
        if session.scalar(select(budgets.c.budget_key).where(budgets.c.budget_key == key.digest)) is not None:
            return
    try:
        with create_session(scoped=False) as session:
            session.execute(
                insert(budgets).values(
                    budget_key=key.digest,
                    conn_id=key.conn_id,
                    dag_id=key.dag_id,
                    run_id=key.run_id,
                    name=key.name,
                    created_at=now,
                    touched_at=now,
                )
            )
            old = select(budgets.c.budget_key).where(budgets.c.created_at < now - BUDGET_RETENTION_DAYS * 86400)
            for table in (reservations, budget_tasks):
                session.execute(delete(table).where(table.c.budget_key.in_(old)))
            session.execute(delete(budgets).where(budgets.c.created_at < now - BUDGET_RETENTION_DAYS * 86400))
    except IntegrityError:
        pass  # made by a concurrent reservation meanwhile


def _lock(session: Session, key: BudgetKey, now: float) -> bool:
    """Take the budget's lock for the rest of ``session``'s transaction; return whether the budget exists."""
    # The UPDATE comes first: on SQLite it is what takes the write lock before anything is read.
    session.execute(update(budgets).where(budgets.c.budget_key == key.digest).values(touched_at=now))
    found = session.scalar(select(budgets.c.budget_key).where(budgets.c.budget_key == key.digest).with_for_update())
    return found is not None


def _standing(session: Session, key: BudgetKey) -> tuple[float, float]:
    spent = session.scalar(
        select(func.coalesce(func.sum(budget_tasks.c.credits), 0.0)).where(budget_tasks.c.budget_key == key.digest)
    )
    in_flight = session.scalar(
        select(func.coalesce(func.sum(reservations.c.expected_credits), 0.0)).where(
            reservations.c.budget_key == key.digest, reservations.c.settled_at.is_(None)
        )
    )
    return float(spent or 0.0), float(in_flight or 0.0)


def _expected_cost(session: Session, conn_id: str, model: str) -> float:
    learned = session.scalar(
        select(model_costs.c.credits).where(model_costs.c.conn_id == conn_id, model_costs.c.model == model)
    )
    return DEFAULT_EDIT_CREDITS if learned is None else float(learned)


def _learn_cost(session: Session, conn_id: str, model: str, credits: float, now: float) -> None:
    where = (model_costs.c.conn_id == conn_id, model_costs.c.model == model)
    found = session.scalar(select(model_costs.c.model).where(*where).with_for_update())
    if found is not None:
        session.execute(update(model_costs).where(*where).values(credits=credits, updated_at=now))
        return
    try:
        with session.begin_nested():
            session.execute(insert(model_costs).values(conn_id=conn_id, model=model, credits=credits, updated_at=now))
    except IntegrityError:  # another budget learned it meanwhile
        session.execute(update(model_costs).where(*where).values(credits=credits, updated_at=now))
