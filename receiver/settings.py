"""All configuration, read once from the environment (and a ``.env`` file) into one object.

Every variable starts with ``SIGNBACK_`` except the PaaS conventions ``DATABASE_URL``,
``PORT`` and ``WEB_CONCURRENCY``. Secrets are ``SecretStr`` so they never show up in a repr,
a log line or an error message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from receiver.errors import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite:///./signback.db"


class ProviderSettings(BaseSettings):
    """A provider's own settings, read like the core's (environment, then ``.env``) and
    validated at start with the same error format. A subclass sets its prefix (the rest of
    the configuration is inherited)::

        class AcmeSettings(ProviderSettings):
            model_config = SettingsConfigDict(env_prefix="SIGNBACK_ACME_")
    """

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    @classmethod
    def env_name(cls, field_name: str) -> str:
        """The environment variable a field is read from, for error messages."""
        return f"{cls.model_config.get('env_prefix', '')}{field_name}".upper()


S = TypeVar("S", bound=ProviderSettings)


def http_base_url(value: str) -> str:
    """A base URL: http(s), without a trailing slash (the body of a field validator)."""
    value = value.strip().rstrip("/")
    if not value.lower().startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value


# How long a request may stay silent in each open state before it is stale (seconds).
STALE_AFTER_DEFAULTS: Mapping[str, float] = {
    "registered": 3600.0,  # the provider has said nothing an hour after registration
    "draft": 7 * 24 * 3600.0,
    "sent": 7 * 24 * 3600.0,
    "viewed": 7 * 24 * 3600.0,
    "partially_signed": 7 * 24 * 3600.0,
}


def parse_stale_after(value: Any) -> dict[str, float]:
    """``"sent=86400,registered=600"`` (or a mapping) over the defaults; only open states,
    positive seconds."""
    merged = dict(STALE_AFTER_DEFAULTS)
    if value is None or value == "":
        return merged
    items: Mapping[str, Any]
    if isinstance(value, str):
        pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError("write state=seconds pairs separated by commas (sent=86400,…)")
        items = {k.strip(): v.strip() for k, v in pairs}
    elif isinstance(value, Mapping):
        items = value
    else:
        raise ValueError("write state=seconds pairs separated by commas (sent=86400,…)")
    for state, seconds in items.items():
        if state not in STALE_AFTER_DEFAULTS:
            raise ValueError(
                f"{state!r} is no open state; one of {', '.join(STALE_AFTER_DEFAULTS)}"
            )
        try:
            number = float(seconds)
        except (TypeError, ValueError):
            raise ValueError(f"{state}: {seconds!r} is no number of seconds") from None
        if not (math.isfinite(number) and number > 0):
            raise ValueError(f"{state}: seconds must be positive")
        merged[state] = number
    return merged


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SIGNBACK_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    # --- core --------------------------------------------------------------------------
    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        repr=False,  # may carry a password
        validation_alias=AliasChoices("SIGNBACK_DATABASE_URL", "DATABASE_URL", "database_url"),
    )
    public_url: str = "http://127.0.0.1:8000"  # base of every callback URL we hand out
    admin_token: SecretStr = Field(min_length=16)  # bearer token for /api and the CLI
    # Derives each request's callback token (HMAC of a stored nonce), so a copy of the
    # database alone does not reveal any callback URL. Changing it invalidates all URLs.
    secret_key: SecretStr = Field(min_length=32)
    rules_module: str | None = None  # e.g. "mycompany.signing_rules"
    max_body_bytes: int = 1024 * 1024
    # How long `signback serve` keeps an idle client connection open (uvicorn's
    # timeout_keep_alive). Behind a load balancer that reuses connections it must exceed
    # the balancer's idle timeout, or the balancer may send a request on a connection being
    # closed and answer the provider 502.
    keepalive_seconds: int = Field(default=5, ge=1, le=86400)
    # Connections that would starve the service (receiver/intake/connguard.py): a request head
    # must arrive within this long of its first byte (or of the connection's opening) ...
    header_timeout_seconds: float = Field(default=5.0, gt=0, le=600)
    # ... and its body within this long of the head.
    body_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    # Connections per process; by default derived from the descriptor limit.
    max_connections: int | None = Field(default=None, ge=1)
    # Callback bodies being received at once per process; beyond it, 503 + Retry-After.
    max_body_bytes_in_flight: int = Field(default=64 * 1024 * 1024, ge=1)
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    # --- workers -----------------------------------------------------------------------
    run_worker: bool = True  # `signback serve` also runs the pipeline and the outbox
    outbox_concurrency: int = Field(default=16, ge=1, le=256)
    outbox_max_attempts: int = Field(default=12, ge=1)
    outbox_max_age_seconds: float = Field(default=2 * 24 * 3600, gt=0)
    retry_base_delay: float = Field(default=2.0, gt=0)
    retry_max_delay: float = Field(default=600.0, gt=0)
    lease_seconds: float = Field(default=60.0, gt=0)
    poll_interval: float = Field(default=1.0, gt=0)
    shutdown_grace_seconds: float = Field(default=25.0, ge=0)
    db_pool_min: int = Field(default=1, ge=1)
    db_pool_max: int = Field(default=10, ge=1)
    sqlite_busy_timeout_ms: int = Field(default=5000, ge=0)

    # --- the rejection log and the console (receiver/intake/rejections.py, receiver/console/) ---
    # Refused callbacks kept (the newest; 0: none kept). At most a thousand a second are
    # written, in one batch, off the intake's path.
    rejection_log_rows: int = Field(default=10_000, ge=0, le=10_000_000)
    # A read-only sign-in for the console (pages only, no form that changes anything).
    viewer_token: SecretStr | None = Field(default=None, min_length=16)
    # How long a console sign-in lasts.
    console_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)

    # Providers that are not installed as a distribution (receiver/providers/registry.py).
    provider_modules: str | None = None

    # Each installed provider's own settings (its own class and prefix), set by
    # load_settings; not read from the environment under this name.
    _sections: dict[str, ProviderSettings] = PrivateAttr(default_factory=dict)

    # --- downstream endpoints (receiver/outbox/downstream/) --------------------------------
    # Deliveries to loopback, private, link-local … addresses (checked on the resolved
    # address at every connection): off by default; on for local development and tests.
    endpoint_allow_private: bool = False
    # Comma-separated host names (or *.example.com) endpoints may use; empty: any host.
    endpoint_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Deliveries in flight per process: in all, and to any one endpoint (its share, so that
    # a slow endpoint leaves room for the others). Provider calls have their own
    # (outbox_concurrency).
    endpoint_concurrency: int = Field(default=128, ge=1, le=1024)
    endpoint_concurrency_per_endpoint: int = Field(default=64, ge=1, le=1024)
    endpoint_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    endpoint_max_attempts: int = Field(default=20, ge=1)
    endpoint_max_age_seconds: float = Field(default=3 * 24 * 3600, gt=0)
    endpoint_retry_max_delay: float = Field(default=3600.0, gt=0)
    # An endpoint with no successful delivery for this long while deliveries fail is
    # disabled (a signback.endpoint.disabled event and a metric say so).
    endpoint_disable_after_seconds: float = Field(default=5 * 24 * 3600, gt=0)
    # After rotate-secret, the previous secret signs too for this long.
    endpoint_secret_overlap_seconds: float = Field(default=24 * 3600, ge=0)

    # --- reconciliation (receiver/reconcile/, docs/reconcile.md) ---------------------------
    # Ask the providers for each open request's real state on a schedule: first soon after
    # registration, then twice as long each time up to the cap, until the request ends or is
    # older than the maximum age. Off: only ``signback reconcile`` reads.
    reconcile_enabled: bool = True
    reconcile_first_delay_seconds: float = Field(default=120.0, gt=0)
    reconcile_max_interval_seconds: float = Field(default=6 * 3600.0, gt=0)
    reconcile_max_age_seconds: float = Field(default=30 * 24 * 3600.0, gt=0)
    # A sendInfo claim Document info does not confirm yet, or a provider reporting that it
    # could not call signback: a read this soon instead.
    reconcile_soon_seconds: float = Field(default=30.0, gt=0)
    # Down (no worker heartbeat) longer than this: every open request is due at start.
    reconcile_downtime_seconds: float = Field(default=600.0, gt=0)
    # Reads queued per provider at once (the rest wait for the next look).
    reconcile_batch_size: int = Field(default=50, ge=1, le=10000)
    # Reads in flight per process, in a lane of their own (receiver/outbox/lanes.py). Each
    # holds a slot of its provider's read budget while it sleeps for it: eight at 120 reads
    # a minute reach 4 s ahead, within the 5 s a caller may sleep for a slot, so reads are
    # not put back for slots other reads took, and an operation sharing the budget still
    # finds one within its wait.
    reconcile_concurrency: int = Field(default=8, ge=1, le=64)
    # How often the worker looks for due reads and stale requests.
    reconcile_tick_seconds: float = Field(default=5.0, gt=0)
    # Silent longer than this in a state: stale ("state=seconds,…", over the defaults).
    stale_after: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=lambda: dict(STALE_AFTER_DEFAULTS)
    )

    @field_validator("stale_after", mode="before")
    @classmethod
    def _stale_thresholds(cls, value: Any) -> Any:
        return parse_stale_after(value)

    # --- the archive (receiver/archive/, docs/archive.md) -----------------------------------
    # Download and keep each completed request's signed document (and the provider's
    # evidence) through an outbox action.
    archive_enabled: bool = True
    # Where the files go: a local directory (default: "archive" next to the SQLite file; with
    # PostgreSQL "./archive" under the working directory) ...
    archive_dir: str | None = None
    # ... or an S3-compatible bucket, s3://bucket/prefix (endpoint and credentials from the
    # usual AWS_* variables, AWS_ENDPOINT_URL included). Wins over archive_dir.
    archive_url: str | None = None
    # The largest file archived; a larger one is refused (the action is dead, saying why).
    archive_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    # Signs the download links handed out (API, downstream events). Unset: derived from
    # SIGNBACK_SECRET_KEY (HMAC with a label of its own), so links need no new secret.
    archive_link_secret: SecretStr | None = Field(default=None, min_length=32)
    # How long a signed download link works.
    archive_link_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    # Retention, run by the worker; unset (the default): kept for ever.
    # Archived files older than this are deleted from the storage (their rows stay).
    archive_retention_days: float | None = Field(default=None, gt=0)
    # Raw bodies of processed callbacks older than this are emptied (their normalized facts
    # and the timeline stay).
    inbox_retention_days: float | None = Field(default=None, gt=0)

    @field_validator("archive_url")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith("s3://") or not value[5:].split("/", 1)[0]:
            raise ValueError("must be s3://bucket or s3://bucket/prefix")
        return value

    @field_validator("endpoint_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS and level not in ("WARN", "FATAL"):  # logging's aliases
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return http_base_url(value)

    @field_validator("database_url")
    @classmethod
    def _paas_postgres_scheme(cls, value: str) -> str:
        url = normalize_database_url(value)
        # What open_database can open (anything else was a traceback at the first query).
        if url in ("sqlite://", "sqlite:///:memory:") or (
            url.startswith("sqlite:///") and len(url) > len("sqlite:///")
        ):
            return url
        if url.startswith("postgresql://") or url.startswith("postgresql+"):
            return url
        raise ValueError("must be sqlite:///<path of a file> or postgresql://…")

    @model_validator(mode="after")
    def _budget_holds_a_body(self) -> Settings:
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                "SIGNBACK_MAX_BODY_BYTES_IN_FLIGHT must be at least SIGNBACK_MAX_BODY_BYTES "
                f"({self.max_body_bytes}), or no callback of the largest size could ever be read"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def section(self, cls: type[S]) -> S:
        """A provider's own settings, by their class (``AcmeSettings``), as loaded at start."""
        for found in self._sections.values():
            if type(found) is cls:
                return found
        raise ConfigurationError(f"the settings of {cls.__name__} were not loaded")

    def section_named(self, provider: str) -> ProviderSettings | None:
        """A provider's own settings, by the provider's name."""
        return self._sections.get(provider)

    def with_sections(self, sections: Mapping[str, ProviderSettings]) -> Settings:
        """These settings, with the given providers' own beside them (returns ``self``)."""
        self._sections.update(sections)
        return self


def normalize_database_url(url: str) -> str:
    """Heroku-style platforms hand out postgres://; SQLAlchemy and psycopg want postgresql://."""
    url = url.strip()
    if url.startswith("postgres://"):
        return "postgresql://" + url[len("postgres://") :]
    return url


def database_url_from_env() -> str:
    """The database URL alone (for `signback migrate`, which needs no other setting), found
    as :func:`load_settings` finds it: the environment before the ``.env`` file, so that a
    platform's ``DATABASE_URL`` wins over a ``SIGNBACK_DATABASE_URL`` left in a local file
    (migrate had once upgraded the file's SQLite database while serve used the platform's)."""
    import os

    from dotenv import dotenv_values

    names = ("SIGNBACK_DATABASE_URL", "DATABASE_URL")
    file_values = dotenv_values(".env") if os.path.exists(".env") else {}
    for source in (os.environ, file_values):
        for name in names:
            value = source.get(name)
            if value:
                return normalize_database_url(value)
    return DEFAULT_DATABASE_URL


def redact_url(url: str) -> str:
    """A database URL fit for a log line: the password is replaced."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def env_name(field: str, settings_class: type[BaseSettings] = BaseSettings) -> str:
    """The environment variable a settings field is read from, for error messages."""
    if issubclass(settings_class, ProviderSettings):
        return settings_class.env_name(field)
    if field.lower() in ("database_url", "signback_database_url"):  # the field or an alias
        return "SIGNBACK_DATABASE_URL (or DATABASE_URL)"
    return f"SIGNBACK_{field.upper()}"


def load_settings(*, purpose: str = "signback cannot start", **overrides: Any) -> Settings:
    """Build the settings, the core's and each installed provider's, turning pydantic's
    errors into one message naming each variable. ``purpose`` begins the message: what
    cannot happen without them (a CLI command that starts nothing says so in its own words).

    ``overrides`` (tests, embedding) name core fields as they are (``public_url``) and a
    provider's as ``<provider>_<field>`` (``acme_api_key``); ``_env_file`` and the like go
    to every settings class."""
    from receiver.providers.registry import discover

    shared = {k: v for k, v in overrides.items() if k.startswith("_")}
    core_values = {k: v for k, v in overrides.items() if not k.startswith("_")}
    modules = overrides.get("provider_modules")
    try:  # SIGNBACK_PROVIDER_MODULES, read as the settings read it, unless given here
        packages = discover(modules if isinstance(modules, str) else None)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{purpose}: {exc}") from None
    provider_values: dict[str, dict[str, Any]] = {name: {} for name in packages}
    for key in list(core_values):
        owner = next((name for name in packages if key.startswith(name + "_")), None)
        if owner is not None and key not in Settings.model_fields:
            provider_values[owner][key[len(owner) + 1 :]] = core_values.pop(key)
    settings, problems = _validated(Settings, {**shared, **core_values})
    sections: dict[str, ProviderSettings] = {}
    for name, package in packages.items():
        section, more = _validated(package.settings, {**shared, **provider_values[name]})
        problems += more
        if section is not None:
            sections[name] = section
    if problems or not isinstance(settings, Settings):
        raise _configuration_error(purpose, problems)
    return settings.with_sections(sections)


def load_section(cls: type[S], *, purpose: str = "signback cannot start", **values: Any) -> S:
    """One provider's settings, with :func:`load_settings`'s error message."""
    section, problems = _validated(cls, values)
    if problems or section is None:
        raise _configuration_error(purpose, problems)
    return section


B = TypeVar("B", bound=BaseSettings)


def _validated(cls: type[B], values: Mapping[str, Any]) -> tuple[B | None, list[str]]:
    try:
        return cls(**values), []
    except ValidationError as exc:
        return None, [_problem(error, cls) for error in exc.errors(include_url=False)]


def _configuration_error(purpose: str, problems: list[str]) -> ConfigurationError:
    """Every problem at once, one line each, under a line that says what cannot happen."""
    count = f"{len(problems)} settings are" if len(problems) != 1 else "1 setting is"
    return ConfigurationError(
        f"{purpose}: {count} not valid:\n"
        + "".join(f"  {problem}\n" for problem in problems)
        + "See the README's configuration table (python3 scripts/run.py writes a .env with"
        " fresh secrets for local use)."
    )


def check_settings(*, purpose: str) -> None:
    """Raise :class:`ConfigurationError` for every variable that is set to a value that is
    not valid, without requiring the ones a command does not need (``signback migrate``
    needs only the database URL, yet a mistyped variable is worth knowing of at release)."""
    try:
        load_settings(purpose=purpose)
    except ConfigurationError as exc:
        lines = str(exc).splitlines()
        problems = [
            line.strip()
            for line in lines[1:-1]
            if not line.strip().endswith("is required but not set")
        ]
        if len(lines) < 3:  # not a list of settings (a provider module): as it is
            raise
        if problems:
            raise _configuration_error(purpose, problems) from None


# pydantic's words for the common mistakes, as a person reads them.
_PLAIN: Mapping[str, str] = {
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false (or 1/0, yes/no, on/off)",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "literal_error": "must be one of {expected}",
    "json_invalid": "is not valid JSON",
}


def _problem(error: Any, settings_class: type[BaseSettings]) -> str:
    """One validation error as a person reads it. Never the value: it may be a secret."""
    loc = error["loc"]
    kind = error["type"]
    context = error.get("ctx") or {}
    if not loc:  # a check across fields, whose message names the variables itself
        return str(error["msg"]).removeprefix("Value error, ")
    name = env_name(str(loc[0]), settings_class)
    if kind == "missing":
        return f"{name} is required but not set"
    # pydantic counts "items" for a SecretStr; these are strings of characters.
    if kind in ("too_short", "string_too_short") and "min_length" in context:
        return f"{name} must be at least {context['min_length']} characters long"
    if kind in ("too_long", "string_too_long") and "max_length" in context:
        return f"{name} must be at most {context['max_length']} characters long"
    plain = _PLAIN.get(kind)
    if plain is not None:
        try:
            return f"{name}: {plain.format(**context)}"
        except (KeyError, IndexError):
            pass
    return f"{name}: {str(error['msg']).removeprefix('Value error, ')}"
