"""A PostgreSQL server that cannot be reached is reported as such, in one line, by every
command and at start and shutdown; never as "schema not current", never as a traceback.

"Unreachable" is a real refusal: a port on loopback nobody listens on.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from receiver import cli
from receiver.app import build_context, prepare_database
from receiver.worker import Worker
from tests.conftest import ADMIN_TOKEN, SECRET_KEY, test_settings


@pytest.fixture
def unreachable() -> str:
    """A PostgreSQL URL whose port refuses connections."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://signback:secret-pw@127.0.0.1:{port}/signback"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for name in list(os.environ):
        if name.startswith("SIGNBACK_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)


def run(args: list[str], **env: str) -> Result:
    return CliRunner().invoke(
        cli.main, args, env={"SIGNBACK_LOG_FORMAT": "json", **env}, prog_name="signback"
    )


@pytest.mark.usefixtures("clean_env")
def test_migrate_says_it_cannot_reach_the_database_in_one_line(unreachable: str) -> None:
    result = run(["migrate"], DATABASE_URL=unreachable)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("signback migrate: cannot migrate postgresql://signback:***@")
    assert "Connection refused" in lines[0] or "connection failed" in lines[0]
    assert "secret-pw" not in result.output
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("clean_env")
def test_a_command_says_it_cannot_reach_the_database_in_one_line(unreachable: str) -> None:
    result = run(
        ["requests", "list"],
        SIGNBACK_DATABASE_URL=unreachable,
        SIGNBACK_ADMIN_TOKEN=ADMIN_TOKEN,
        SIGNBACK_SECRET_KEY=SECRET_KEY,
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("signback requests list: the database could not answer: ")
    assert "Traceback" not in result.output


def test_serving_starts_saying_the_database_is_unreachable_and_stops_cleanly(
    unreachable: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = test_settings(unreachable)

    async def start_and_stop() -> None:
        ctx = build_context(settings)
        await prepare_database(ctx)  # serving: logs, does not raise
        worker = Worker(ctx)
        await worker.stop()  # wakes nobody: the database is gone, and that is no error
        await ctx.close()
        await ctx.db.close()

    asyncio.run(start_and_stop())
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    events = [line["event"] for line in lines]
    assert "database unreachable at start; /readyz reports it until it answers" in events
    assert not any("schema is not current" in event for event in events)
    assert "stopping without waking the worker loops" in events
    assert all("Traceback" not in str(line) for line in lines)
    assert "secret-pw" not in str(lines)
