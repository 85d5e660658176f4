"""The admin API against a database without signback's schema (never migrated, or tables
gone): a 503 that says to run ``signback migrate``, never a 500. On both databases. And a
command on a PostgreSQL database never migrated says so in one line."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from click.testing import CliRunner

from receiver import cli
from receiver.settings import Settings
from receiver.store.migrate import head_revision
from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.databases import PostgresTemplates, postgres_admin_url, with_database
from tests.harness import running_receiver

ROUTES = [
    ("GET", "/api/requests"),
    ("GET", "/api/requests/1"),
    ("POST", "/api/requests"),
    ("GET", "/api/outbox"),
    ("POST", "/api/outbox/1/retry"),
    ("GET", "/api/inbox"),
    ("POST", "/api/inbox/1/retry"),
    ("GET", "/api/stats"),
    ("GET", "/metrics"),
    ("GET", "/api/endpoints"),
    ("GET", "/api/endpoints/1"),
    ("POST", "/api/endpoints/1/test"),
    ("GET", "/api/endpoints/1/deliveries"),
    ("GET", "/api/events"),
]


def remove_schema(database_url: str) -> None:
    """Rename every table away, as if the database had never been migrated."""
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            names = [
                row[0]
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%'"
                )
            ]
            for name in names:
                conn.execute(f'ALTER TABLE "{name}" RENAME TO "gone_{name}"')
        return
    with psycopg.connect(database_url, autocommit=True) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        ]
        for name in names:
            conn.execute(f'ALTER TABLE "{name}" RENAME TO "gone_{name}"')


def test_admin_api_without_the_schema_is_a_503_naming_the_fix(
    make_settings: Callable[..., Settings],
) -> None:
    with running_receiver(make_settings, run_worker=False) as receiver:
        remove_schema(receiver.settings.database_url)
        with receiver.admin() as admin:
            for method, path in ROUTES:
                body = b'{"provider":"firma","signatureRequestId":"x"}'
                answer = admin.request(
                    method,
                    path,
                    content=body if method == "POST" else None,
                    headers={"content-type": "application/json"},
                )
                assert answer.status_code == 503, (method, path, answer.text)
                assert answer.json() == {"error": "schema is not current: run signback migrate"}
                assert answer.headers["retry-after"]
        with receiver.client() as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert "signback migrate" in ready.text


@pytest.fixture
def empty_postgres(postgres_templates: PostgresTemplates) -> Iterator[str]:
    """A PostgreSQL database that was never migrated."""
    name = f"signback_empty_{uuid.uuid4().hex[:12]}"
    admin = postgres_admin_url()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.mark.postgres
@pytest.mark.parametrize(
    "args",
    [["requests", "list"], ["outbox", "list"], ["endpoints", "list"], ["inbox", "retry", "1"]],
)
def test_a_command_on_a_database_never_migrated_says_so_in_one_line(
    empty_postgres: str, args: list[str]
) -> None:
    """It used to log the problem as JSON and then fail on the first missing table."""
    result = CliRunner().invoke(
        cli.main,
        args,
        env={
            "SIGNBACK_DATABASE_URL": empty_postgres,
            "SIGNBACK_ADMIN_TOKEN": ADMIN_TOKEN,
            "SIGNBACK_SECRET_KEY": SECRET_KEY,
        },
        prog_name="signback",
    )
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"signback {' '.join(args[:2])}: schema is not current (database at no migration,"
        f" code at {head_revision()}): run signback migrate"
    ]
