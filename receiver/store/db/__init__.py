"""Database access: one small async interface, two drivers (SQLite, PostgreSQL).

SQL is written once with ``:name`` parameters in the subset both engines share (``ON
CONFLICT``, ``RETURNING``); the PostgreSQL driver rewrites parameters for psycopg and adds
``FOR UPDATE SKIP LOCKED`` where a query asks for ``{skip_locked}``.
"""

from __future__ import annotations

from receiver.store.db.base import Database, Row, Transaction, open_database

__all__ = ["Database", "Row", "Transaction", "open_database"]
