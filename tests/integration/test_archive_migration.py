"""Migration 0010 (the archive's ``documents`` table and ``inbox.body_purged_at``) goes up,
down to the revision before it and up again on both databases, keeping the rows that were
there."""

from __future__ import annotations

import asyncio

from alembic import command
from alembic.script import ScriptDirectory

from receiver.store.db import open_database
from receiver.store.migrate import alembic_config, upgrade


async def _tables(url: str) -> tuple[bool, bool, int]:
    db = open_database(url)
    await db.connect()
    try:
        try:
            await db.fetch_all("SELECT id FROM documents LIMIT 1")
            has_documents = True
        except Exception:
            has_documents = False
        try:
            await db.fetch_all("SELECT body_purged_at FROM inbox LIMIT 1")
            has_column = True
        except Exception:
            has_column = False
        requests = await db.fetch_one("SELECT count(*) AS n FROM signature_requests")
        assert requests is not None
        return has_documents, has_column, int(requests["n"])
    finally:
        await db.close()


async def _seed(url: str) -> None:
    db = open_database(url)
    await db.connect()
    try:
        async with db.transaction() as tx:
            await tx.execute(
                "INSERT INTO signature_requests (provider, external_id, state, metadata,"
                " token_hash, token_nonce, created_at, updated_at) VALUES ('firma', 'sr-m',"
                " 'completed', '{}', 'h', 'n', 0, 0)"
            )
            await tx.execute(
                "INSERT INTO documents (request_id, name, kind, media_type, size, sha256,"
                " storage_key, archived_at) SELECT id, 'signed.pdf', 'signed',"
                " 'application/pdf', 5, :sha, 'k', 1 FROM signature_requests"
                " WHERE external_id = 'sr-m'",
                {"sha": "ab" * 32},
            )
    finally:
        await db.close()


def test_0010_up_down_up(database_url: str) -> None:
    config = alembic_config(database_url)
    before = ScriptDirectory.from_config(config).get_revision("0010").down_revision
    assert isinstance(before, str)
    upgrade(database_url)
    asyncio.run(_seed(database_url))
    assert asyncio.run(_tables(database_url)) == (True, True, 1)
    command.downgrade(config, before)
    assert asyncio.run(_tables(database_url)) == (False, False, 1)
    upgrade(database_url)
    assert asyncio.run(_tables(database_url)) == (True, True, 1)
