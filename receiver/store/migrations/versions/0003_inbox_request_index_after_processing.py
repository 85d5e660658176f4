"""Index inbox rows by request only once the pipeline has been through them.

The index's one user is a request's timeline (``GET /api/requests/{id}``). Every callback's
insert had to add an entry at a random place in it (callbacks for a thousand requests land
on a thousand different pages), and on SQLite every page a commit touches is written out
to the WAL again: a fifth of the intake's cost per callback, paid before the
acknowledgement. Rows still waiting for the pipeline are few and have their own index
(``ix_inbox_status``), so the timeline finds them there; the pipeline, after the ack, adds
each row to this index when it settles the row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SETTLED = sa.text("status NOT IN ('pending', 'processing')")


def upgrade() -> None:
    op.drop_index("ix_inbox_request", table_name="inbox")
    op.create_index(
        "ix_inbox_request_settled",
        "inbox",
        ["request_id", "id"],
        sqlite_where=SETTLED,
        postgresql_where=SETTLED,
    )


def downgrade() -> None:
    op.drop_index("ix_inbox_request_settled", table_name="inbox")
    op.create_index("ix_inbox_request", "inbox", ["request_id", "id"])
