"""Indexes for the admin API's lists that had none (issue #20: list queries p99 ≤ 50 ms at
1,000,000 requests and 5,000,000 callbacks; ``python -m bench.console`` times them).

- ``outbox (lane, status, id)``: a status's newest actions in one lane, as an index range
  (``GET /api/endpoints/{id}/deliveries?status=``; without a status, one range per status;
  ``GET /api/outbox?status=``, one range per lane). The due index has ``due_at`` before
  ``id``: read through it, every action of the lane in that status was sorted, and the
  outbox keeps every delivery, one per event per endpoint. Its cost on writes: one more
  B-tree entry per action (beside the primary key, the unique key and the due index, which
  every action has, and the partial ones some have), moved at each change of status
  (pending → in_flight → done). PostgreSQL's updates of the outbox were never HOT (the
  status is indexed already), so each adds one index tuple more. The intake does not
  write the outbox; the pipeline and the dispatcher do.
- ``events (type, id)``: ``GET /api/events?type=``. Without it a type that is rare, or not
  stored at all, was looked for along the whole table. Events are written by the pipeline,
  once per state change, not by the intake.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_lane_status", "outbox", ["lane", "status", "id"])
    op.create_index("ix_events_type", "events", ["type", "id"])


def downgrade() -> None:
    op.drop_index("ix_events_type", table_name="events")
    op.drop_index("ix_outbox_lane_status", table_name="outbox")
