"""Every CLI command that takes an id, fed generated ids: a usage error (exit 2), an answer,
or one line saying what is not there; never a traceback (ids beyond 64 bits raised
OverflowError from SQLite)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st

from receiver import cli
from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.property import strategies as s
from tests.property.conftest import examples

COMMANDS = [
    ["requests", "show"],
    ["outbox", "retry"],
    ["inbox", "retry"],
    ["endpoints", "show"],
    ["endpoints", "deliveries"],
    ["endpoints", "test"],
    ["endpoints", "disable"],
    ["simulate", "firma"],
]


@pytest.fixture
def environment(sqlite_url: str) -> dict[str, str]:
    """The variables the commands run with (CliRunner sets them for each run only)."""
    return {
        "SIGNBACK_DATABASE_URL": sqlite_url,
        "SIGNBACK_ADMIN_TOKEN": ADMIN_TOKEN,
        "SIGNBACK_SECRET_KEY": SECRET_KEY,
        "SIGNBACK_LOG_FORMAT": "json",
    }


def test_id_arguments_never_end_in_a_traceback(environment: dict[str, str]) -> None:
    runner = CliRunner()

    @settings(max_examples=examples(60))
    @given(
        command=st.sampled_from(COMMANDS),
        raw_id=st.one_of(
            st.integers().map(str),
            st.sampled_from(["9223372036854775808", "9" * 30, "0", "-1", "1e3", "0x10"]),
            s.text,
        ),
    )
    @example(command=["requests", "show"], raw_id="99999999999999999999999")
    def run(command: list[str], raw_id: str) -> None:
        result = runner.invoke(
            cli.main, [*command, "--", raw_id], env=environment, prog_name="signback"
        )
        assert result.exit_code in (0, 1, 2), (command, raw_id, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            command,
            raw_id,
            result.output,
        )
        assert "Traceback" not in result.output

    run()
