"""The rejection log: refused callbacks, bounded, for "why is my webhook refused?".

One row per refused callback (kept to the newest ``SIGNBACK_REJECTION_LOG_ROWS``; older rows
are trimmed by id, through the primary key). The headers are stored redacted, the body only
as its length and its first bytes (escaped). Rows are written off the intake's hot path, in
batches (receiver/intake/rejections.py).

``(provider, id)`` serves the console's and the API's filter by provider, newest first.

Requests get ``(provider, state, id)``: the console's search by provider and state (the
state index alone left PostgreSQL walking the primary key and filtering the provider,
0.2 s on a million requests whose open ones are the newest).

Revision ID: 0011
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "rejections",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("received_at", Timestamp, nullable=False),
        sa.Column("route", sa.String(200), nullable=False),  # the path, tokens cut out
        sa.Column("provider", sa.String(32)),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        # JSON: what explains the refusal (a signature's timestamp skew, secrets tried …).
        sa.Column("details", sa.Text(), nullable=False, server_default="{}"),
        sa.Column("remote", sa.String(64)),
        sa.Column("headers", sa.Text(), nullable=False, server_default="{}"),  # redacted
        sa.Column("body_length", sa.BigInteger()),  # None: the body was never read
        sa.Column("body_head", sa.Text()),  # the first bytes, escaped
    )
    op.create_index("ix_rejections_provider", "rejections", ["provider", "id"])
    op.create_index("ix_requests_provider_state", "signature_requests", ["provider", "state", "id"])


def downgrade() -> None:
    op.drop_index("ix_requests_provider_state", table_name="signature_requests")
    op.drop_index("ix_rejections_provider", table_name="rejections")
    op.drop_table("rejections")
