"""A credential of its own for a request's hook URL, apart from the browser's return URL.

Until now one token opened both ``/return/<token>`` (the signer's browser) and the request's
hook route (``/hooks/<provider>/<token>``, the provider's unsigned callback), so every
signer held the credential that posts callbacks for their own request. Each request now has
a hook token of its own (then called the sendInfo token, after the first provider's
callback); ``token_hash`` keeps the return token's hash (the same token as before, so return
links already handed out keep working).

- ``sendinfo_hash``: SHA-256 of the hook token, unique. NULL for rows written before this
  revision: the token is derived from ``SIGNBACK_SECRET_KEY``, which a migration does not
  know, so the app fills it in at start-up (``receiver/pipeline/hook_token_split.py``) and
  queues the call that gives the provider the new hook URL.
- ``shared_token_retired_at``: when the return token stopped opening the hook route. NULL
  means it still does: a request registered before the split, whose provider may still hold
  the old hook URL. It is set once the provider has acknowledged the new URL (or at
  start-up, for a request that has ended or whose provider has no hook-token URL), and at
  registration for every new request.

Both columns are nullable without a default, so a process still running the previous
release (a rolling deploy) can go on registering requests: they look like any other row
written before this revision, and are moved the same way.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Timestamp = sa.Float(precision=53)


def upgrade() -> None:
    op.add_column("signature_requests", sa.Column("sendinfo_hash", sa.String(64)))
    op.add_column("signature_requests", sa.Column("shared_token_retired_at", Timestamp))
    op.create_index(
        "uq_requests_sendinfo_hash", "signature_requests", ["sendinfo_hash"], unique=True
    )


def downgrade() -> None:
    op.drop_index("uq_requests_sendinfo_hash", table_name="signature_requests")
    with op.batch_alter_table("signature_requests") as batch:
        batch.drop_column("shared_token_retired_at")
        batch.drop_column("sendinfo_hash")
