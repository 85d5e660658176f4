"""Initial schema: signature requests, inbox, outbox, attempt log, key-value state.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# 64-bit ids on PostgreSQL; SQLite needs plain INTEGER for its rowid alias.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.Float(precision=53)  # unix seconds; one type that both dialects compare fast


def upgrade() -> None:
    op.create_table(
        "signature_requests",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("document_id", sa.String(200)),
        sa.Column("reference", sa.String(200)),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("provider_status", sa.String(32)),
        sa.Column("return_url", sa.Text()),
        sa.Column("retry_url", sa.Text()),
        sa.Column("metadata", sa.Text(), nullable=False, server_default="{}"),
        sa.Column("defaults", sa.Text(), nullable=False, server_default="{}"),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("token_nonce", sa.String(64), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.UniqueConstraint("provider", "external_id", name="uq_requests_provider_external"),
        sa.UniqueConstraint("token_hash", name="uq_requests_token_hash"),
    )
    op.create_index("ix_requests_reference", "signature_requests", ["reference"])
    op.create_index("ix_requests_state", "signature_requests", ["state", "id"])

    op.create_table(
        "inbox",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("dedupe_key", sa.String(200), nullable=False),
        sa.Column("received_at", Timestamp, nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("query", sa.Text(), nullable=False, server_default=""),
        sa.Column("request_id", BigId, sa.ForeignKey("signature_requests.id")),
        sa.Column("external_id", sa.String(200)),
        # pending → processing → processed | unmatched | failed
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("lease_expires_at", Timestamp),
        sa.Column("error", sa.Text()),
        sa.Column("kind", sa.String(40)),
        sa.Column("provider_type", sa.String(120)),
        sa.Column("event_id", sa.String(200)),
        sa.Column("occurred_at", Timestamp),
        sa.Column("state_before", sa.String(32)),
        sa.Column("state_after", sa.String(32)),
        sa.Column("note", sa.Text()),
        sa.Column("processed_at", Timestamp),
        sa.UniqueConstraint("provider", "dedupe_key", name="uq_inbox_provider_dedupe"),
    )
    op.create_index("ix_inbox_status", "inbox", ["status", "id"])
    op.create_index("ix_inbox_request", "inbox", ["request_id", "id"])
    op.create_index("ix_inbox_external", "inbox", ["provider", "external_id", "status"])

    op.create_table(
        "outbox",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("request_id", BigId, sa.ForeignKey("signature_requests.id"), nullable=False),
        sa.Column("action_key", sa.String(200), nullable=False),
        sa.Column("operation", sa.String(100), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        # pending → in_flight → done | dead | skipped (and back to pending for a retry)
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("due_at", Timestamp, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("lease_expires_at", Timestamp),
        sa.Column("claimed_by", sa.String(100)),
        sa.Column("last_status_code", sa.Integer()),
        sa.Column("last_error", sa.Text()),
        sa.Column("source_inbox_id", BigId),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.UniqueConstraint("request_id", "action_key", name="uq_outbox_request_key"),
    )
    op.create_index("ix_outbox_due", "outbox", ["status", "due_at"])
    op.create_index("ix_outbox_request", "outbox", ["request_id", "id"])
    # The claim's head-of-line check only looks at unfinished actions: keep that index small.
    active = sa.text("status IN ('pending', 'in_flight')")
    op.create_index(
        "ix_outbox_active",
        "outbox",
        ["request_id", "id"],
        sqlite_where=active,
        postgresql_where=active,
    )

    op.create_table(
        "outbox_attempts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("action_id", BigId, sa.ForeignKey("outbox.id"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("duration_ms", sa.Float()),
        sa.Column("status_code", sa.Integer()),
        # ok | retry | dead | skipped | interrupted
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("response_excerpt", sa.Text()),
    )
    op.create_index("ix_attempts_action", "outbox_attempts", ["action_id", "attempt"])

    op.create_table(
        "kv",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    for table in ("kv", "outbox_attempts", "outbox", "inbox", "signature_requests"):
        op.drop_table(table)
