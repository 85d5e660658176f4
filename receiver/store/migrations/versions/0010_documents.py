"""The document archive (receiver/archive/): one row per archived file.

- ``documents``: a request's archived files (the signed PDF, the provider's evidence), one
  row per (request, name). ``storage_key`` names the object in the configured storage
  (a path under SIGNBACK_ARCHIVE_DIR, or a key under SIGNBACK_ARCHIVE_URL's prefix); it
  holds the content's SHA-256, so one object is one version of one document. A row is
  written only after the object is complete in the storage, so a row always means a whole
  file. ``purged_at`` is set when retention removed the file (the row stays: the checksum
  is the record of what was signed).
- ``inbox.body_purged_at``: when retention (SIGNBACK_INBOX_RETENTION_DAYS) emptied the raw
  body of a processed callback; its normalized facts and the timeline stay.

Adds a table and a nullable column: nothing is rewritten, nothing waits.

Revision ID: 0010
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.Float(precision=53)
LIVE = sa.text("purged_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("request_id", BigId, sa.ForeignKey("signature_requests.id"), nullable=False),
        sa.Column("name", sa.String(120), nullable=False),  # e.g. signed.pdf
        sa.Column("kind", sa.String(40), nullable=False),  # signed | audit_trail | …
        sa.Column("media_type", sa.String(80), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("storage_key", sa.Text(), nullable=False),
        sa.Column("archived_at", Timestamp, nullable=False),
        sa.Column("purged_at", Timestamp),
        sa.UniqueConstraint("request_id", "name", name="uq_documents_request_name"),
    )
    # Retention walks the live rows by age.
    op.create_index(
        "ix_documents_live_archived",
        "documents",
        ["archived_at", "id"],
        sqlite_where=LIVE,
        postgresql_where=LIVE,
    )
    op.add_column("inbox", sa.Column("body_purged_at", Timestamp))


def downgrade() -> None:
    op.drop_column("inbox", "body_purged_at")
    op.drop_index("ix_documents_live_archived", table_name="documents")
    op.drop_table("documents")
