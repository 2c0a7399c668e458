"""
The run budgets' ledger: budgets, their reservations, the tasks they paid for, and each model's last cost.

Revision ID: a1c3e5f70003
Revises: a1c3e5f70002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a1c3e5f70003"
down_revision = "a1c3e5f70002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the four tables, with the indexes that pruning and settling use."""
    op.create_table(
        "apikley_budget",
        sa.Column("budget_key", sa.String(64), primary_key=True),
        sa.Column("conn_id", sa.String(250), nullable=False),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("touched_at", sa.Float, nullable=False),
    )
    op.create_index("ix_apikley_budget_created_at", "apikley_budget", ["created_at"])
    op.create_table(
        "apikley_budget_reservation",
        sa.Column("budget_key", sa.String(64), primary_key=True),
        sa.Column("reservation_key", sa.String(64), primary_key=True),
        sa.Column("owner_key", sa.String(64), nullable=False),
        sa.Column("label", sa.String(400), nullable=False),
        sa.Column("edits", sa.Integer, nullable=False),
        sa.Column("expected_credits", sa.Float, nullable=False),
        sa.Column("reserved_at", sa.Float, nullable=False),
        sa.Column("settled_at", sa.Float, nullable=True),
    )
    op.create_index("ix_apikley_budget_reservation_owner_key", "apikley_budget_reservation", ["owner_key"])
    op.create_table(
        "apikley_budget_task",
        sa.Column("budget_key", sa.String(64), primary_key=True),
        sa.Column("apikley_task_id", sa.String(128), primary_key=True),
        sa.Column("credits", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("settled_at", sa.Float, nullable=False),
    )
    op.create_table(
        "apikley_model_cost",
        sa.Column("conn_id", sa.String(250), primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("credits", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    """Drop the four tables."""
    op.drop_table("apikley_model_cost")
    op.drop_table("apikley_budget_task")
    op.drop_table("apikley_budget_reservation")
    op.drop_table("apikley_budget")
