"""
The callback receiver's tables: accepted signatures, and tasks recorded per asset.

Revision ID: a1c3e5f70001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a1c3e5f70001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create both tables, each with the index its pruning uses."""
    op.create_table(
        "apikley_callback_signature",
        sa.Column("signature_sha256", sa.String(64), primary_key=True),
        sa.Column("accepted_at", sa.Float, nullable=False),
    )
    op.create_index("ix_apikley_callback_signature_accepted_at", "apikley_callback_signature", ["accepted_at"])
    op.create_table(
        "apikley_recorded_task",
        sa.Column("asset_id", sa.Integer, primary_key=True),
        sa.Column("apikley_task_id", sa.String(128), primary_key=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_apikley_recorded_task_recorded_at", "apikley_recorded_task", ["recorded_at"])


def downgrade() -> None:
    """Drop both tables."""
    op.drop_table("apikley_recorded_task")
    op.drop_table("apikley_callback_signature")
