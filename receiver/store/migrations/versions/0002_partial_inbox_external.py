"""Index only unmatched inbox rows by provider and external id.

The index's one user is the re-queue of a newly registered request's earlier events, which
looks only at status 'unmatched'. Over every row it cost each callback's insert and each
processed row's status change a random B-tree page (about a quarter of the insert's CPU on
SQLite, measured in docs/performance.md), and it grew with the whole inbox.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UNMATCHED = sa.text("status = 'unmatched'")


def upgrade() -> None:
    op.drop_index("ix_inbox_external", table_name="inbox")
    op.create_index(
        "ix_inbox_unmatched",
        "inbox",
        ["provider", "external_id"],
        sqlite_where=UNMATCHED,
        postgresql_where=UNMATCHED,
    )


def downgrade() -> None:
    op.drop_index("ix_inbox_unmatched", table_name="inbox")
    op.create_index("ix_inbox_external", "inbox", ["provider", "external_id", "status"])
