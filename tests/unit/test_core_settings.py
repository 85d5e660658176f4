"""Settings from the environment (receiver/settings.py load_settings, redact_url)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from handlers.firma.settings import FirmaSettings
from handlers.okdokument.settings import OkdokumentSettings
from receiver.errors import ConfigurationError
from receiver.settings import (
    DEFAULT_DATABASE_URL,
    Settings,
    database_url_from_env,
    load_settings,
    redact_url,
)

ADMIN_TOKEN = "unit-admin-token-0123456789"
SECRET_KEY = "unit-secret-key-0123456789-0123456789"

Env = Callable[..., Settings]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Env:
    """A clean environment in an empty directory (no real .env), plus the two required keys.

    Call the returned function with variables to set (None removes one) to load settings.
    """
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith("SIGNBACK_") or upper in {"DATABASE_URL", "PORT", "WEB_CONCURRENCY"}:
            monkeypatch.delenv(name)
    monkeypatch.setenv("SIGNBACK_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("SIGNBACK_SECRET_KEY", SECRET_KEY)

    def load(**variables: str | None) -> Settings:
        for name, value in variables.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        return load_settings()

    return load


def test_defaults(env: Env) -> None:
    settings = env()
    assert settings.admin_token.get_secret_value() == ADMIN_TOKEN
    assert settings.secret_key.get_secret_value() == SECRET_KEY
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.is_sqlite
    assert settings.public_url == "http://127.0.0.1:8000"
    firma = settings.section(FirmaSettings)
    assert firma.webhook_secrets == []
    assert firma.workspace_secrets == {}
    okdokument = settings.section(OkdokumentSettings)
    assert okdokument.base_url == "https://apidev.okdokument.com"
    assert okdokument.confirm_callbacks is True
    assert not any(name.startswith(("firma", "okdokument")) for name in Settings.model_fields)


@pytest.mark.parametrize(
    ("variables", "named", "not_named"),
    [
        pytest.param(
            {"SIGNBACK_ADMIN_TOKEN": None},
            ["SIGNBACK_ADMIN_TOKEN is required but not set"],
            ["SIGNBACK_SECRET_KEY"],
            id="admin-token",
        ),
        pytest.param(
            {"SIGNBACK_SECRET_KEY": None},
            ["SIGNBACK_SECRET_KEY is required but not set"],
            ["SIGNBACK_ADMIN_TOKEN"],
            id="secret-key",
        ),
        pytest.param(
            {"SIGNBACK_ADMIN_TOKEN": None, "SIGNBACK_SECRET_KEY": None},
            [
                "SIGNBACK_ADMIN_TOKEN is required but not set",
                "SIGNBACK_SECRET_KEY is required but not set",
            ],
            [],
            id="both",
        ),
        pytest.param(
            {"SIGNBACK_ADMIN_TOKEN": "short-token"},
            ["SIGNBACK_ADMIN_TOKEN must be at least 16 characters long"],
            ["short-token", "SIGNBACK_SECRET_KEY", "items"],
            id="admin-token-too-short",
        ),
        pytest.param(
            {"SIGNBACK_SECRET_KEY": "too-short-secret"},
            ["SIGNBACK_SECRET_KEY must be at least 32 characters long"],
            ["too-short-secret", "items"],
            id="secret-key-too-short",
        ),
        pytest.param(
            {"SIGNBACK_MAX_BODY_BYTES_IN_FLIGHT": "1000"},
            ["SIGNBACK_MAX_BODY_BYTES_IN_FLIGHT must be at least SIGNBACK_MAX_BODY_BYTES"],
            ["Value error", "SIGNBACK_?"],
            id="budget-below-a-body",
        ),
        pytest.param(
            {"SIGNBACK_HEADER_TIMEOUT_SECONDS": "0"},
            ["SIGNBACK_HEADER_TIMEOUT_SECONDS: "],
            [],
            id="header-timeout",
        ),
        pytest.param(
            {"SIGNBACK_OUTBOX_CONCURRENCY": "0"},
            ["SIGNBACK_OUTBOX_CONCURRENCY: "],
            [],
            id="out-of-range",
        ),
        pytest.param(
            {"SIGNBACK_STALE_AFTER": "completed=60"},
            ["SIGNBACK_STALE_AFTER: ", "'completed' is no open state"],
            [],
            id="stale-after-a-final-state",
        ),
        pytest.param(
            {"SIGNBACK_RECONCILE_FIRST_DELAY_SECONDS": "0"},
            ["SIGNBACK_RECONCILE_FIRST_DELAY_SECONDS: "],
            [],
            id="reconcile-delay",
        ),
    ],
)
def test_bad_configuration_names_the_variable(
    env: Env, variables: dict[str, str | None], named: list[str], not_named: list[str]
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        env(**variables)
    message = str(caught.value)
    assert message.startswith("signback cannot start: ")
    for text in named:
        assert text in message
    for text in not_named:
        assert text not in message


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        pytest.param({}, DEFAULT_DATABASE_URL, id="default"),
        pytest.param(
            {"DATABASE_URL": "postgres://u:p@db:5432/app"},
            "postgresql://u:p@db:5432/app",
            id="paas-postgres-scheme",
        ),
        pytest.param(
            {"DATABASE_URL": "postgresql://db/app"}, "postgresql://db/app", id="paas-postgresql"
        ),
        pytest.param(
            {"DATABASE_URL": "  postgres://db/app\n"}, "postgresql://db/app", id="whitespace"
        ),
        pytest.param(
            {"SIGNBACK_DATABASE_URL": "postgres://db/own"},
            "postgresql://db/own",
            id="signback-variable",
        ),
        pytest.param(
            {"SIGNBACK_DATABASE_URL": "sqlite:///./own.db", "DATABASE_URL": "postgres://db/app"},
            "sqlite:///./own.db",
            id="signback-variable-wins",
        ),
        pytest.param(
            {"DATABASE_URL": "postgresql://db/postgres://x"},
            "postgresql://db/postgres://x",
            id="only-the-scheme-is-rewritten",
        ),
    ],
)
def test_database_url(env: Env, variables: dict[str, str], expected: str) -> None:
    settings = env(**variables)
    assert settings.database_url == expected
    assert settings.is_sqlite is expected.startswith("sqlite")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("one", ["one"]),
        ("new,old", ["new", "old"]),
        (" new , old ,", ["new", "old"]),
        (",,", []),
        ("", []),
    ],
)
def test_firma_webhook_secrets_are_comma_separated(
    env: Env, value: str, expected: list[str]
) -> None:
    settings = env(SIGNBACK_FIRMA_WEBHOOK_SECRETS=value).section(FirmaSettings)
    assert [s.get_secret_value() for s in settings.webhook_secrets] == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('{"ws1": "s1"}', {"ws1": ["s1"]}),
        ('{"ws1": ["a", "b"], "ws2": "c"}', {"ws1": ["a", "b"], "ws2": ["c"]}),
        ('{"ws1": []}', {"ws1": []}),
        ("{}", {}),
        ("", {}),
        ("   ", {}),
    ],
)
def test_firma_workspace_secrets_json(env: Env, value: str, expected: dict[str, list[str]]) -> None:
    settings = env(SIGNBACK_FIRMA_WORKSPACE_SECRETS=value).section(FirmaSettings)
    got = {
        workspace: [s.get_secret_value() for s in secrets]
        for workspace, secrets in settings.workspace_secrets.items()
    }
    assert got == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("not json", id="not-json"),
        pytest.param("{", id="truncated"),
        pytest.param("ws1=s1", id="key-value"),
        pytest.param('["s1"]', id="list"),
        pytest.param('"s1"', id="string"),
    ],
)
def test_firma_workspace_secrets_invalid_is_a_configuration_error(env: Env, value: str) -> None:
    with pytest.raises(ConfigurationError, match="SIGNBACK_FIRMA_WORKSPACE_SECRETS"):
        env(SIGNBACK_FIRMA_WORKSPACE_SECRETS=value)


@pytest.mark.parametrize("value", ['{"ws1": 5}', '{"ws1": null}'])
def test_firma_workspace_secrets_of_a_wrong_type_is_a_configuration_error(
    env: Env, value: str
) -> None:
    with pytest.raises(ConfigurationError, match="SIGNBACK_FIRMA_WORKSPACE_SECRETS"):
        env(SIGNBACK_FIRMA_WORKSPACE_SECRETS=value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://signback.example.com", "https://signback.example.com"),
        ("https://signback.example.com/", "https://signback.example.com"),
        ("https://signback.example.com///", "https://signback.example.com"),
        ("  https://signback.example.com/  ", "https://signback.example.com"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("https://example.com/signback/", "https://example.com/signback"),
        ("https://abc.ngrok-free.app", "https://abc.ngrok-free.app"),
    ],
)
def test_public_url_loses_its_trailing_slash(env: Env, value: str, expected: str) -> None:
    assert env(SIGNBACK_PUBLIC_URL=value).public_url == expected


@pytest.mark.parametrize(
    "value",
    ["ftp://signback.example.com", "signback.example.com", "//signback.example.com", "", "/"],
)
def test_public_url_must_be_http(env: Env, value: str) -> None:
    with pytest.raises(ConfigurationError, match=r"SIGNBACK_PUBLIC_URL: .*http:// or https://"):
        env(SIGNBACK_PUBLIC_URL=value)


@pytest.mark.parametrize(
    ("variable", "section"),
    [
        ("SIGNBACK_OKDOKUMENT_BASE_URL", OkdokumentSettings),
        ("SIGNBACK_FIRMA_BASE_URL", FirmaSettings),
    ],
)
def test_provider_base_urls_are_checked_the_same_way(
    env: Env, variable: str, section: type[FirmaSettings | OkdokumentSettings]
) -> None:
    loaded = env(**{variable: "https://api.example/v1/"}).section(section)
    assert loaded.base_url == "https://api.example/v1"
    with pytest.raises(ConfigurationError, match=variable):
        env(**{variable: "api.example"})


@pytest.mark.parametrize(
    ("variables", "section", "field", "expected"),
    [
        ({"SIGNBACK_OKDOKUMENT_API_KEY": "k-123"}, OkdokumentSettings, "api_key", "k-123"),
        ({"SIGNBACK_OKDOKUMENT_TIMEOUT": "3.5"}, OkdokumentSettings, "timeout", 3.5),
        (
            {"SIGNBACK_OKDOKUMENT_CONFIRM_CALLBACKS": "false"},
            OkdokumentSettings,
            "confirm_callbacks",
            False,
        ),
        ({"SIGNBACK_FIRMA_API_KEY": "f-123"}, FirmaSettings, "api_key", "f-123"),
        ({"SIGNBACK_FIRMA_TIMEOUT": "4"}, FirmaSettings, "timeout", 4.0),
        (
            {"SIGNBACK_FIRMA_SIGNATURE_TOLERANCE_SECONDS": "60"},
            FirmaSettings,
            "signature_tolerance_seconds",
            60.0,
        ),
        (
            {"SIGNBACK_FIRMA_INSECURE_SKIP_VERIFICATION": "true"},
            FirmaSettings,
            "insecure_skip_verification",
            True,
        ),
        ({"SIGNBACK_FIRMA_WRITES_PER_MINUTE": "90"}, FirmaSettings, "writes_per_minute", 90.0),
        ({"SIGNBACK_FIRMA_READS_PER_MINUTE": "120"}, FirmaSettings, "reads_per_minute", 120.0),
    ],
)
def test_provider_variables_keep_the_names_users_set(
    env: Env,
    variables: dict[str, str],
    section: type[FirmaSettings | OkdokumentSettings],
    field: str,
    expected: object,
) -> None:
    """Each provider's settings moved into its own package; the variables did not change."""
    value = getattr(env(**variables).section(section), field)
    assert (value.get_secret_value() if hasattr(value, "get_secret_value") else value) == expected


def test_core_and_provider_problems_come_in_one_message(env: Env) -> None:
    with pytest.raises(ConfigurationError) as caught:
        env(
            SIGNBACK_ADMIN_TOKEN=None,
            SIGNBACK_FIRMA_WRITES_PER_MINUTE="500",
            SIGNBACK_OKDOKUMENT_BASE_URL="nowhere",
        )
    message = str(caught.value)
    assert message.startswith("signback cannot start: ")
    for name in (
        "SIGNBACK_ADMIN_TOKEN is required but not set",
        "SIGNBACK_FIRMA_WRITES_PER_MINUTE: ",
        "SIGNBACK_OKDOKUMENT_BASE_URL: ",
    ):
        assert name in message
    # One line per variable, under one that says what cannot happen, and one that says
    # where to look.
    lines = message.splitlines()
    assert lines[0] == "signback cannot start: 3 settings are not valid:"
    assert len(lines) == 5
    assert all(line.startswith("  SIGNBACK_") for line in lines[1:4])
    assert lines[-1].startswith("See the README's configuration table")


def test_a_provider_variable_in_the_dotenv_file_is_read(env: Env, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SIGNBACK_FIRMA_WEBHOOK_SECRETS=from-file\n")
    secrets = env().section(FirmaSettings).webhook_secrets
    assert [s.get_secret_value() for s in secrets] == ["from-file"]


def test_a_dotenv_file_in_the_working_directory_is_read(env: Env, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "SIGNBACK_PUBLIC_URL=https://from-dotenv.example/\nDATABASE_URL=postgres://db/dotenv\n"
    )
    settings = env()
    assert settings.public_url == "https://from-dotenv.example"
    assert settings.database_url == "postgresql://db/dotenv"
    # The environment wins over the file.
    assert env(SIGNBACK_PUBLIC_URL="https://env.example").public_url == "https://env.example"


@pytest.mark.parametrize(
    ("dotenv", "environment", "expected"),
    [
        ("SIGNBACK_DATABASE_URL=sqlite:///./local.db\n", {}, "sqlite:///./local.db"),
        (
            "SIGNBACK_DATABASE_URL=sqlite:///./local.db\n",
            {"DATABASE_URL": "postgres://platform/db"},
            "postgresql://platform/db",
        ),
        (
            "DATABASE_URL=postgres://file/db\n",
            {"SIGNBACK_DATABASE_URL": "postgresql://env/db"},
            "postgresql://env/db",
        ),
        ("", {}, DEFAULT_DATABASE_URL),
    ],
)
def test_migrate_finds_the_database_serve_uses(
    env: Env, tmp_path: Path, dotenv: str, environment: dict[str, str], expected: str
) -> None:
    """``signback migrate`` reads only the database URL, and must find the same one as the
    settings do: the environment before the ``.env`` file."""
    (tmp_path / ".env").write_text(dotenv)
    settings = env(**environment)
    assert database_url_from_env() == settings.database_url == expected


SECRET_VARIABLES = {
    "SIGNBACK_ADMIN_TOKEN": "admin-token-which-is-secret-1",
    "SIGNBACK_SECRET_KEY": "secret-key-which-is-secret-0123456789",
    "SIGNBACK_OKDOKUMENT_API_KEY": "okdokument-key-which-is-secret",
    "SIGNBACK_FIRMA_API_KEY": "firma-key-which-is-secret",
    "SIGNBACK_FIRMA_WEBHOOK_SECRETS": "webhook-secret-new,webhook-secret-old",
    "SIGNBACK_FIRMA_WORKSPACE_SECRETS": '{"ws1": ["workspace-secret-a"]}',
}
SECRET_VALUES = [
    "admin-token-which-is-secret-1",
    "secret-key-which-is-secret-0123456789",
    "okdokument-key-which-is-secret",
    "firma-key-which-is-secret",
    "webhook-secret-new",
    "webhook-secret-old",
    "workspace-secret-a",
]


@pytest.mark.parametrize("secret", SECRET_VALUES)
def test_secrets_never_appear_in_repr(env: Env, secret: str) -> None:
    settings = env(**SECRET_VARIABLES)
    assert secret not in repr(settings)
    assert secret not in str(settings)
    assert secret not in str(settings.model_dump())


def test_database_password_never_appears_in_repr(env: Env) -> None:
    settings = env(DATABASE_URL="postgres://app:db-password-hunter2@db:5432/app")
    assert "db-password-hunter2" not in repr(settings)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://user:hunter2@db.example.com:5432/app",
            "postgresql://user:***@db.example.com:5432/app",
        ),
        ("postgres://u:p%40ss@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require"),
        ("postgresql+psycopg://u:pa:ss@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgresql://u:@h/db", "postgresql://u:***@h/db"),
        ("postgresql://user@h/db", "postgresql://user@h/db"),
        ("postgresql://h:5432/db", "postgresql://h:5432/db"),
        ("sqlite:///./signback.db", "sqlite:///./signback.db"),
        ("sqlite:////tmp/a:b@c.db", "sqlite:////tmp/a:b@c.db"),
        ("", ""),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_without_a_user_name() -> None:
    assert "hunter2" not in redact_url("postgresql://:hunter2@db/app")


@pytest.mark.parametrize(
    ("args", "opening"),
    [
        pytest.param(["serve"], "signback cannot start: ", id="serve"),
        pytest.param(["worker"], "signback cannot start: ", id="worker"),
        pytest.param(["requests", "list"], "signback requests list cannot run: ", id="list"),
        pytest.param(["outbox", "retry", "1"], "signback outbox retry cannot run: ", id="retry"),
    ],
)
def test_commands_say_what_cannot_happen_in_their_own_words(
    env: Env, monkeypatch: pytest.MonkeyPatch, args: list[str], opening: str
) -> None:
    from click.testing import CliRunner

    from receiver import cli

    monkeypatch.delenv("SIGNBACK_ADMIN_TOKEN")
    result = CliRunner().invoke(cli.main, args, prog_name="signback")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == opening + "1 setting is not valid:"
    assert lines[1] == "  SIGNBACK_ADMIN_TOKEN is required but not set"
    assert len(lines) == 3
    assert "Traceback" not in result.output


BAD_VALUES = {
    "SIGNBACK_OUTBOX_CONCURRENCY": ("abc", "must be a whole number"),
    "SIGNBACK_DB_POOL_MAX": ("0", "must be at least 1"),
    "SIGNBACK_PUBLIC_URL": ("notaurl", "must start with http:// or https://"),
    "SIGNBACK_LOG_LEVEL": ("LOUD", "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    "SIGNBACK_RUN_WORKER": ("maybe", "must be true or false"),
    "SIGNBACK_HEADER_TIMEOUT_SECONDS": ("-1", "must be greater than 0"),
    "SIGNBACK_FIRMA_WRITES_PER_MINUTE": ("lots", "must be a number"),
    "SIGNBACK_OKDOKUMENT_BASE_URL": ("ftp://x", "must start with http:// or https://"),
    # Was a ValueError traceback at the first query.
    "SIGNBACK_DATABASE_URL": ("mysql://db/x", "must be sqlite:///<path of a file> or"),
}


@pytest.mark.parametrize(
    ("args", "opening"),
    [
        pytest.param(["serve"], "signback cannot start", id="serve"),
        pytest.param(["worker"], "signback cannot start", id="worker"),
        pytest.param(["migrate"], "signback migrate cannot run", id="migrate"),
        pytest.param(["requests", "list"], "signback requests list cannot run", id="requests"),
        pytest.param(["requests", "show", "1"], "signback requests show cannot run", id="show"),
        pytest.param(["outbox", "list"], "signback outbox list cannot run", id="outbox"),
        pytest.param(["inbox", "retry", "1"], "signback inbox retry cannot run", id="inbox"),
        pytest.param(["endpoints", "list"], "signback endpoints list cannot run", id="endpoints"),
        pytest.param(["simulate", "firma", "1"], "signback simulate firma cannot run", id="sim"),
    ],
)
def test_every_bad_variable_is_named_on_a_line_of_its_own_by_every_command(
    env: Env, monkeypatch: pytest.MonkeyPatch, args: list[str], opening: str
) -> None:
    """Bad values used to come out as one long line in pydantic's words (or, for migrate,
    not at all). Every command names each bad variable, one per line, all at once, in plain
    words and without the value (it may be a secret), and exits 2."""
    from click.testing import CliRunner

    from receiver import cli

    for name, (value, _) in BAD_VALUES.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli.main, args, prog_name="signback")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"{opening}: {len(BAD_VALUES)} settings are not valid:"
    named = {line.strip().split(":")[0].split(" (or")[0]: line for line in lines[1:-1]}
    assert set(named) == set(BAD_VALUES)
    for name, (value, words) in BAD_VALUES.items():
        assert words in named[name]
        assert value not in named[name].split(":", 1)[1].replace(words, "")
    assert "Traceback" not in result.output
    assert "Input should be" not in result.output


def test_migrate_needs_only_the_database_url(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A release step may have no admin token or secret key: migrate does not ask for them,
    only for what is set to be valid."""
    from click.testing import CliRunner

    from receiver import cli

    monkeypatch.delenv("SIGNBACK_ADMIN_TOKEN")
    monkeypatch.delenv("SIGNBACK_SECRET_KEY")
    result = CliRunner().invoke(cli.main, ["migrate"], prog_name="signback")
    assert result.exit_code == 0, result.output
    assert "is at migration" in result.output
