"""Downstream delivery: endpoints, the normalized events they receive, and outbox lanes.

- ``endpoints``: the company's own URLs that signback pushes signed events to (Standard
  Webhooks). The signing secrets are stored encrypted (``receiver/outbox/downstream/secrets.py``):
  a dump of this table alone reveals none of them. An endpoint is never deleted, only marked
  ``deleted``: its id is part of every ``webhook-id`` it was sent and of its outbox lane, so
  an id must never be handed out twice.
- ``events``: every normalized downstream event, stored once (the document minus what is
  per endpoint), so that it can be delivered to any endpoint and replayed with the same
  ``webhook-id``. ``dedupe_key`` keeps an event from being stored twice for one cause.
- ``outbox.lane``: which queue an action waits in. ``provider`` for calls to the providers
  (everything before this revision), ``endpoint:<id>`` for deliveries to one endpoint. The
  head-of-line rule now holds per (request, lane): one request's deliveries to one endpoint
  go out in order, never behind its provider PATCHes or another endpoint. The due index
  leads with the lane, so that each lane's claim walks its own actions in claim order
  however large another lane's backlog is.
- ``outbox.request_id`` becomes nullable: an event about no request (``signback.test``, an
  endpoint disabled) has nothing to be ordered with. Such actions are unique by key alone.

On SQLite the outbox table is rebuilt (its request_id column changes), and on both
databases its two indexes are rebuilt: writes to the outbox wait meanwhile (seconds on an
outbox of a few million actions). Callbacks are still acknowledged (the inbox is untouched).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.Float(precision=53)
ACTIVE = sa.text("status IN ('pending', 'in_flight')")
WITHOUT_REQUEST = sa.text("request_id IS NULL")


def upgrade() -> None:
    op.create_table(
        "endpoints",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        # JSON lists: event types (empty: every signature_request.* type) and providers
        # (empty: all).
        sa.Column("kinds", sa.Text(), nullable=False, server_default="[]"),
        sa.Column("providers", sa.Text(), nullable=False, server_default="[]"),
        sa.Column("include_raw", sa.Boolean(), nullable=False, server_default=sa.false()),
        # enabled | disabled | deleted
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("disabled_reason", sa.Text()),
        sa.Column("disabled_at", Timestamp),
        sa.Column("secret", sa.Text(), nullable=False),  # encrypted
        sa.Column("previous_secret", sa.Text()),  # encrypted; signs too until the time below
        sa.Column("previous_secret_until", Timestamp),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("last_success_at", Timestamp),
        sa.Column("last_failure_at", Timestamp),
        sa.Column("last_failure", sa.Text()),
        # The first failure since the last success (NULL while it succeeds): what disables
        # an endpoint that keeps failing.
        sa.Column("failing_since", Timestamp),
    )

    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("public_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(80), nullable=False),
        sa.Column("request_id", BigId, sa.ForeignKey("signature_requests.id")),
        sa.Column("provider", sa.String(32)),
        sa.Column("timestamp", Timestamp, nullable=False),
        # The JSON document every endpoint receives (sorted keys); ``raw``, the provider's
        # own payload, is kept apart and added only for endpoints that ask for it.
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text()),
        sa.Column("dedupe_key", sa.String(200), nullable=False),
        sa.Column("source_inbox_id", BigId),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.UniqueConstraint("public_id", name="uq_events_public_id"),
        sa.UniqueConstraint("dedupe_key", name="uq_events_dedupe_key"),
    )
    op.create_index("ix_events_created", "events", ["created_at", "id"])
    op.create_index("ix_events_request", "events", ["request_id", "id"])

    op.drop_index("ix_outbox_due", table_name="outbox")
    op.drop_index("ix_outbox_active", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(
            sa.Column("lane", sa.String(80), nullable=False, server_default="provider")
        )
        batch.alter_column("request_id", existing_type=BigId, nullable=True)
    op.create_index("ix_outbox_due", "outbox", ["lane", "status", "due_at", "id"])
    op.create_index(
        "ix_outbox_active",
        "outbox",
        ["request_id", "lane", "id"],
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )
    # (request_id, action_key) is unique only where request_id is set: NULLs are distinct.
    op.create_index(
        "uq_outbox_key_without_request",
        "outbox",
        ["action_key"],
        unique=True,
        sqlite_where=WITHOUT_REQUEST,
        postgresql_where=WITHOUT_REQUEST,
    )


def downgrade() -> None:
    op.execute(
        "DELETE FROM outbox_attempts WHERE action_id IN (SELECT id FROM outbox"
        " WHERE request_id IS NULL OR lane <> 'provider')"
    )
    op.execute("DELETE FROM outbox WHERE request_id IS NULL OR lane <> 'provider'")
    op.drop_index("uq_outbox_key_without_request", table_name="outbox")
    op.drop_index("ix_outbox_active", table_name="outbox")
    op.drop_index("ix_outbox_due", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("request_id", existing_type=BigId, nullable=False)
        batch.drop_column("lane")
    op.create_index("ix_outbox_due", "outbox", ["status", "due_at", "id"])
    op.create_index(
        "ix_outbox_active",
        "outbox",
        ["request_id", "id"],
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )
    op.drop_index("ix_events_request", table_name="events")
    op.drop_index("ix_events_created", table_name="events")
    op.drop_table("events")
    op.drop_table("endpoints")
