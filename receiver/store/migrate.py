"""Versioned migrations (alembic) for both dialects: ``signback migrate``."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from receiver.store.db.base import Database
from receiver.store.db.errors import is_missing_table

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def sqlalchemy_url(url: str) -> str:
    """The URL for SQLAlchemy: PostgreSQL goes through psycopg 3, the driver we ship."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return config


def upgrade(url: str) -> None:
    """Bring the database to the newest schema (idempotent)."""
    from receiver.store.db.sqlite import sqlite_path

    if url.startswith("sqlite"):
        Path(sqlite_path(url)).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")


@lru_cache(maxsize=1)
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


async def current_revision(db: Database) -> str | None:
    """The schema's migration; None for a database without one yet. Any other failure
    (an unreachable database) is raised: it must not read as "not migrated"."""
    try:
        row = await db.fetch_one("SELECT version_num FROM alembic_version")
    except Exception as exc:
        if is_missing_table(exc):
            return None
        raise
    return None if row is None else str(row["version_num"])
