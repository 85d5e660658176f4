"""Shared pytest fixtures: anyio, fresh databases of both kinds, settings."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from receiver.settings import Settings, load_settings
from tests.databases import (
    PostgresTemplates,
    SqliteTemplate,
    postgres_admin_url,
    postgres_unavailable,
)

ADMIN_TOKEN = "test-admin-token-0123456789"


def pytest_configure(config: pytest.Config) -> None:
    # Under CI the console's browser tests must run: a missing Chromium stops the run at
    # once, loudly, instead of failing each browser test on its own.
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        from tests.browser import missing_chromium

        if (problem := missing_chromium()) is not None:
            raise pytest.UsageError(f"CI=true: {problem}")


SECRET_KEY = "test-secret-key-0123456789-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> SqliteTemplate:
    return SqliteTemplate(tmp_path_factory.mktemp("sqlite-template"))


_pg_state: dict[str, Any] = {}


@pytest.fixture(scope="session")
def postgres_templates() -> Iterator[PostgresTemplates]:
    if "error" in _pg_state:
        postgres_unavailable(_pg_state["error"])
    try:
        templates = PostgresTemplates(postgres_admin_url())
    except psycopg.Error as exc:
        _pg_state["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
        postgres_unavailable(_pg_state["error"])
        raise
    yield templates
    templates.close()


@pytest.fixture
def sqlite_url(sqlite_template: SqliteTemplate, tmp_path: Path) -> str:
    return sqlite_template.fresh(tmp_path)


@pytest.fixture
def postgres_url(postgres_templates: PostgresTemplates) -> Iterator[str]:
    url = postgres_templates.fresh()
    yield url
    postgres_templates.drop(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite and once on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


def test_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a test: fast retries and polls, fixed secrets, no .env file. A provider's
    settings are named ``<provider>_<field>`` (``firma_api_key``), as load_settings takes."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "admin_token": ADMIN_TOKEN,
        "secret_key": SECRET_KEY,
        "public_url": "http://signback.test",
        "okdokument_base_url": "http://okdokument.test",
        "okdokument_api_key": "fake-okdokument-key",
        "firma_base_url": "http://firma.test/functions/v1/signing-request-api",
        "firma_api_key": "fake-firma-key",
        "firma_webhook_secrets": ["firma-test-secret"],
        "log_format": "json",
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.05,
        "poll_interval": 0.05,
        # The reconciler reads and reports on a schedule of its own: only the tests about it
        # switch it on (with time-scaled settings), so that it adds no reads to the others.
        "reconcile_enabled": False,
        # The archive downloads every completed request's documents: extra provider calls
        # and files most tests are not about. The archive's own tests switch it on, with a
        # directory of their own (tests/integration/test_archive_flow.py).
        "archive_enabled": False,
        "_env_file": None,
    }
    values.update(overrides)
    return load_settings(purpose="test settings", **values)


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


@pytest.fixture
def make_settings(database_url: str) -> Callable[..., Settings]:
    """Settings on this test's database (SQLite and PostgreSQL, see ``database_url``)."""

    def make(**overrides: Any) -> Settings:
        return test_settings(database_url, **overrides)

    return make


@pytest.fixture
def make_sqlite_settings(sqlite_url: str) -> Callable[..., Settings]:
    """Settings on a fresh SQLite file only, for tests about SQLite itself."""

    def make(**overrides: Any) -> Settings:
        return test_settings(sqlite_url, **overrides)

    return make
