"""The version of its document a request's outcome was confirmed with.

A provider whose documents go through several signing rounds (one request per round, the
same document id) answers a question about the document, not about a round: an answer
about an earlier round must not confirm a claim of a later one. When an outcome is
confirmed, the provider's marker of the document's version (such as the modification time
its document API reports) is kept on the request; a later round's claim is confirmed only by
an answer from after it (the provider package's operation that checks a claim).

- ``document_version``: that marker, as the provider wrote it. NULL until an outcome is
  confirmed (and for every request of a provider that has no such marker).
- an index on ``(provider, document_id)``: the rounds of one document, found together.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("signature_requests", sa.Column("document_version", sa.String(64)))
    op.create_index(
        "ix_requests_provider_document", "signature_requests", ["provider", "document_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_requests_provider_document", table_name="signature_requests")
    with op.batch_alter_table("signature_requests") as batch:
        batch.drop_column("document_version")
