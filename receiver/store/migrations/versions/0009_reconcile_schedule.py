"""Reconciliation: each open request's schedule of reads at its provider, and stale reports.

- ``next_reconcile_at``: when the reconciler next asks the provider for this request's real
  state (receiver/reconcile/). NULL: not scheduled (the request ended, is older than
  ``SIGNBACK_RECONCILE_MAX_AGE_SECONDS``, or its provider cannot be asked). A partial index
  over the scheduled rows answers the reconciler's "due" scan, ordered by that time, without
  touching the requests that ended (almost all of them, after a while).
- ``reconcile_interval``: the wait before the read after the next one (doubling to a cap).
- ``stale_state``: the state a ``signature_request.stale`` event was last emitted for, so it
  is emitted once per request and threshold.

Open requests already registered are due at once: each is read once soon after the upgrade,
then on the schedule. All three columns are nullable without a default: rows written by the
previous release during a rolling deploy are simply not scheduled until the next start
after a downtime, or a manual ``signback reconcile``.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

Timestamp = sa.Float(precision=53)
SCHEDULED = sa.text("next_reconcile_at IS NOT NULL")
OPEN_STATES = "('registered', 'draft', 'sent', 'viewed', 'partially_signed')"


def upgrade() -> None:
    op.add_column("signature_requests", sa.Column("next_reconcile_at", Timestamp))
    op.add_column("signature_requests", sa.Column("reconcile_interval", Timestamp))
    op.add_column("signature_requests", sa.Column("stale_state", sa.String(32)))
    op.create_index(
        "ix_requests_next_reconcile",
        "signature_requests",
        ["next_reconcile_at", "id"],
        postgresql_where=SCHEDULED,
        sqlite_where=SCHEDULED,
    )
    op.execute(
        f"UPDATE signature_requests SET next_reconcile_at = updated_at WHERE state IN {OPEN_STATES}"
    )


def downgrade() -> None:
    op.drop_index("ix_requests_next_reconcile", table_name="signature_requests")
    with op.batch_alter_table("signature_requests") as batch:
        batch.drop_column("stale_state")
        batch.drop_column("reconcile_interval")
        batch.drop_column("next_reconcile_at")
