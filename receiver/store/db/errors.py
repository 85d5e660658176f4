"""Which exceptions mean "the database could not do it" (unreachable, refused, missing),
as opposed to a bug: commands report the former in one line instead of a traceback."""

from __future__ import annotations

import sqlite3

import psycopg
import sqlalchemy.exc

# psycopg_pool's PoolTimeout is a psycopg.OperationalError; alembic raises SQLAlchemy's.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    psycopg.Error,
    sqlite3.Error,
    sqlalchemy.exc.SQLAlchemyError,
    OSError,
)


def is_missing_table(exc: BaseException) -> bool:
    """A query failed because its table does not exist (yet), on either database."""
    if getattr(exc, "sqlstate", None) == "42P01":  # PostgreSQL's undefined_table
        return True
    return isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc)
