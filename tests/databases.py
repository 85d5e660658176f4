"""Fresh databases for tests: a SQLite file or a PostgreSQL database per test.

Both are copied from a template migrated once per session (a file copy; ``CREATE DATABASE
… TEMPLATE``), so every test starts from the real schema in milliseconds and leaves nothing
behind. PostgreSQL comes from SIGNBACK_TEST_POSTGRES_URL, else the local server
(postgresql://postgres@127.0.0.1:5432/postgres). If it cannot be reached, the PostgreSQL
tests are skipped on a developer's machine and FAIL under CI=true: a green CI run always
includes them.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from receiver.store.migrate import upgrade

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_admin_url() -> str:
    return os.environ.get("SIGNBACK_TEST_POSTGRES_URL") or DEFAULT_ADMIN_URL


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def postgres_unavailable(reason: str) -> None:
    message = (
        f"PostgreSQL is not reachable ({reason}). Set SIGNBACK_TEST_POSTGRES_URL to a server "
        "where this user may CREATE DATABASE."
    )
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " Under CI=true this is a failure, not a skip.", pytrace=False)
    pytest.skip(message)


class PostgresTemplates:
    """Creates one migrated template database; hands out copies; drops everything at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.run_id = uuid.uuid4().hex[:8]
        self.template = f"signback_tpl_{self.run_id}"
        self.created: list[str] = []
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{self.template}"')
        upgrade(with_database(admin_url, self.template))

    @contextmanager
    def _admin(self) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            yield conn

    def fresh(self) -> str:
        name = f"signback_t_{self.run_id}_{len(self.created)}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.created.append(name)
        return with_database(self.admin_url, name)

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1].split("?", 1)[0]
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        with self._admin() as conn:
            for name in [*self.created, self.template]:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class SqliteTemplate:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "template.db"
        upgrade(f"sqlite:///{self.path}")

    def fresh(self, directory: Path) -> str:
        target = directory / "signback.db"
        shutil.copyfile(self.path, target)
        return f"sqlite:///{target}"
