"""
What Apikley said of each delivered task, kept for the triggers waiting for it.

Revision ID: a1c3e5f70004
Revises: a1c3e5f70003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a1c3e5f70004"
down_revision = "a1c3e5f70003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the table, with the index its pruning uses."""
    op.create_table(
        "apikley_delivered_task",
        sa.Column("conn_id", sa.String(250), primary_key=True),
        sa.Column("apikley_task_id", sa.String(128), primary_key=True),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("delivered_at", sa.Float, nullable=False),
    )
    op.create_index("ix_apikley_delivered_task_delivered_at", "apikley_delivered_task", ["delivered_at"])


def downgrade() -> None:
    """Drop the table."""
    op.drop_index("ix_apikley_delivered_task_delivered_at", table_name="apikley_delivered_task")
    op.drop_table("apikley_delivered_task")
