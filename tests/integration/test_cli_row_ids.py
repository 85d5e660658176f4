"""Every CLI command that takes a row id refuses one past 64 bits as a usage error (exit
code 2, one line), on both databases; SQLite's driver used to end it with a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from receiver.cli import main
from tests.conftest import ADMIN_TOKEN, SECRET_KEY

TOO_LARGE = str(2**64)

COMMANDS = [
    ["requests", "show", TOO_LARGE],
    ["outbox", "retry", TOO_LARGE],
    ["inbox", "retry", TOO_LARGE],
    *(
        ["endpoints", command, TOO_LARGE]
        for command in (
            "show",
            "disable",
            "enable",
            "rotate-secret",
            "test",
            "replay",
            "retry-dead",
            "deliveries",
            "delete",
        )
    ),
    ["endpoints", "update", TOO_LARGE, "--description", "x"],
    ["endpoints", "replay", "1", "--request-id", TOO_LARGE],
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: " ".join(args[:2]))
def test_a_row_id_past_64_bits_is_a_usage_error(database_url: str, args: list[str]) -> None:
    env = {
        "SIGNBACK_DATABASE_URL": database_url,
        "SIGNBACK_ADMIN_TOKEN": ADMIN_TOKEN,
        "SIGNBACK_SECRET_KEY": SECRET_KEY,
        "SIGNBACK_LOG_LEVEL": "WARNING",
    }
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "is not in the range 1<=x<=9223372036854775807" in result.output
    assert "Traceback" not in result.output
