"""Extend the outbox's due index to (status, due_at, id): the claim's order.

The claim takes the first due actions by (due_at, id). On (status, due_at) alone PostgreSQL
had to fetch *every* pending due action, check each one's head-of-line rule and sort them,
to hand out 16: with 47,500 actions pending after an outage, 230 ms per claim, so a
dispatcher working off that backlog was held to about 70 actions/s. With id in the index it
walks the actions in claim order and stops at the limit: 2 ms. (SQLite appends the rowid,
which is ``id``, to every index entry: it already walked in order; the wider key costs it
nothing more.)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_outbox_due", table_name="outbox")
    op.create_index("ix_outbox_due", "outbox", ["status", "due_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_due", table_name="outbox")
    op.create_index("ix_outbox_due", "outbox", ["status", "due_at"])
