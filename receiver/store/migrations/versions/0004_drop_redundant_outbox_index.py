"""Drop the outbox's (request_id, id) index: the unique (request_id, action_key) index
already finds a request's actions, and the claim's head-of-line check has its own partial
index on unfinished actions. It cost every new action one more B-tree insert.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_outbox_request", table_name="outbox")


def downgrade() -> None:
    op.create_index("ix_outbox_request", "outbox", ["request_id", "id"])
