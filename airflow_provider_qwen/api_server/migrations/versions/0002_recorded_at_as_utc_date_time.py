"""
``apikley_recorded_task.recorded_at`` takes the type of Airflow's own times (``UtcDateTime``).

PostgreSQL's type stays ``TIMESTAMP WITH TIME ZONE``, so nothing runs there; MySQL's ``DATETIME``
becomes ``TIMESTAMP(6)`` and SQLite's declared ``DATETIME`` becomes ``TIMESTAMP`` (the stored text
is the same).

Revision ID: a1c3e5f70002
Revises: a1c3e5f70001
Create Date: 2026-12-06
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "a1c3e5f70002"
down_revision = "a1c3e5f70001"
branch_labels = None
depends_on = None

DateTimeType = sa.types.TypeEngine[datetime]

#: What the first revision created.
DATE_TIME = sa.DateTime(timezone=True)
#: What ``airflow.utils.sqlalchemy.UtcDateTime`` creates, spelled out so this revision never changes with it.
UTC_DATE_TIME = sa.TIMESTAMP(timezone=True).with_variant(mysql.TIMESTAMP(fsp=6), "mysql")


def recorded_tasks(recorded_at: DateTimeType) -> sa.Table:
    """
    Return the table with ``recorded_at`` of the type given.

    Batch mode (SQLite) copies it instead of reading the database, so ``--show-sql-only`` works too.
    """
    return sa.Table(
        "apikley_recorded_task",
        sa.MetaData(),
        sa.Column("asset_id", sa.Integer, primary_key=True),
        sa.Column("apikley_task_id", sa.String(128), primary_key=True),
        sa.Column("recorded_at", recorded_at, nullable=False),
        sa.Index("ix_apikley_recorded_task_recorded_at", "recorded_at"),
    )


def change_recorded_at(old: DateTimeType, new: DateTimeType) -> None:
    """Change the column's type where the database would declare it differently."""
    dialect = op.get_context().dialect
    if old.compile(dialect=dialect) == new.compile(dialect=dialect):
        return
    with op.batch_alter_table("apikley_recorded_task", copy_from=recorded_tasks(old)) as batch:
        batch.alter_column("recorded_at", type_=new, existing_type=old, existing_nullable=False)


def upgrade() -> None:
    """Declare ``recorded_at`` as ``UtcDateTime`` does."""
    change_recorded_at(DATE_TIME, UTC_DATE_TIME)


def downgrade() -> None:
    """Declare ``recorded_at`` as the first revision did."""
    change_recorded_at(UTC_DATE_TIME, DATE_TIME)
