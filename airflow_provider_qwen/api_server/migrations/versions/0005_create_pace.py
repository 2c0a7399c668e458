"""
The create pace: each connection's next create slot, and the slots handed out.

Revision ID: a1c3e5f70005
Revises: a1c3e5f70004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a1c3e5f70005"
down_revision = "a1c3e5f70004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the two tables, with the index that forgetting old slots uses; times in double precision."""
    op.create_table(
        "apikley_create_pace",
        sa.Column("conn_id", sa.String(250), primary_key=True),
        sa.Column("next_slot_at", sa.Float(precision=53), nullable=False),
        sa.Column("touched_at", sa.Float(precision=53), nullable=False),
    )
    op.create_table(
        "apikley_create_slot",
        sa.Column("conn_id", sa.String(250), primary_key=True),
        sa.Column("request_id", sa.String(32), primary_key=True),
        sa.Column("slot_at", sa.Float(precision=53), nullable=False),
        sa.Column("reserved_at", sa.Float(precision=53), nullable=False),
    )
    op.create_index("ix_apikley_create_slot_reserved_at", "apikley_create_slot", ["reserved_at"])


def downgrade() -> None:
    """Drop the two tables."""
    op.drop_table("apikley_create_slot")
    op.drop_table("apikley_create_pace")
