"""All configuration, read once from the environment (and a ``.env`` file) into one object.

Every variable starts with ``SIGNBACK_`` except the PaaS conventions ``DATABASE_URL``,
``PORT`` and ``WEB_CONCURRENCY``. Secrets are ``SecretStr`` so they never show up in a repr,
a log line or an error message.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from receiver.errors import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite:///./signback.db"


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

    # --- OKdokument --------------------------------------------------------------------
    okdokument_base_url: str = "https://apidev.okdokument.com"
    okdokument_api_key: SecretStr | None = None
    okdokument_timeout: float = 10.0
    # Rule (b): confirm an unsigned sendInfo claim with Document info before acting on it.
    okdokument_confirm_callbacks: bool = True

    # --- Firma.dev ---------------------------------------------------------------------
    firma_base_url: str = "https://api.firma.dev/functions/v1/signing-request-api"
    firma_api_key: SecretStr | None = None
    firma_timeout: float = 10.0
    # Comma-separated; several allowed so our side can rotate too (new first, old after).
    firma_webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # {"<workspace id>": ["secret", …]} for /hooks/firma/<workspace id>, as JSON.
    firma_workspace_secrets: Annotated[dict[str, list[SecretStr]], NoDecode] = Field(
        default_factory=dict
    )
    firma_signature_tolerance_seconds: float = Field(default=300.0, gt=0)
    # Development only: accept unsigned Firma deliveries. Logged loudly at every start.
    firma_insecure_skip_verification: bool = False
    # signback's own budgets per API key, shared by every process on the database. Firma
    # allows 120 writes and 200 reads a minute per key; the defaults keep a margin for the
    # jitter between a slot's start and the call's arrival at Firma.
    firma_writes_per_minute: float = Field(default=100.0, gt=0, le=120)
    firma_reads_per_minute: float = Field(default=150.0, gt=0, le=200)

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

    @field_validator("endpoint_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @field_validator("firma_webhook_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("firma_workspace_secrets", mode="before")
    @classmethod
    def _parse_workspaces(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return {}
            parsed = json.loads(value)
            if not isinstance(parsed, dict):
                raise ValueError('expected a JSON object: {"<workspace id>": ["secret", …]}')
            secrets: dict[str, list[str]] = {}
            for workspace, value in parsed.items():
                items = [value] if isinstance(value, str) else value
                if not isinstance(items, list) or not all(
                    isinstance(item, str) and item for item in items
                ):
                    raise ValueError(
                        f"workspace {workspace!r}: expected a secret or a list of secrets"
                    )
                secrets[str(workspace)] = items
            return secrets
        return value

    @field_validator("public_url", "okdokument_base_url", "firma_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("database_url")
    @classmethod
    def _paas_postgres_scheme(cls, value: str) -> str:
        return normalize_database_url(value)

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


def env_name(field: str) -> str:
    """The environment variable a settings field is read from, for error messages."""
    if field == "database_url":
        return "SIGNBACK_DATABASE_URL (or DATABASE_URL)"
    return f"SIGNBACK_{field.upper()}"


def load_settings(*, purpose: str = "signback cannot start", **overrides: Any) -> Settings:
    """Build the settings, turning pydantic's errors into one message naming each variable.
    ``purpose`` begins the message: what cannot happen without them (a CLI command that
    starts nothing says so in its own words)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [_problem(error) for error in exc.errors(include_url=False)]
        raise ConfigurationError(
            f"{purpose}: " + "; ".join(lines) + ". See the README's configuration "
            "table (python3 scripts/run.py writes a .env with fresh secrets for local use)."
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{purpose}: SIGNBACK_FIRMA_WORKSPACE_SECRETS is not valid JSON: {exc}"
        ) from None


def _problem(error: Any) -> str:
    """One validation error as a person reads it. Never the value: it may be a secret."""
    loc = error["loc"]
    kind = error["type"]
    context = error.get("ctx") or {}
    if not loc:  # a check across fields, whose message names the variables itself
        return str(error["msg"]).removeprefix("Value error, ")
    name = env_name(str(loc[0]))
    if kind == "missing":
        return f"{name} is required but not set"
    # pydantic counts "items" for a SecretStr; these are strings of characters.
    if kind in ("too_short", "string_too_short") and "min_length" in context:
        return f"{name} must be at least {context['min_length']} characters long"
    if kind in ("too_long", "string_too_long") and "max_length" in context:
        return f"{name} must be at most {context['max_length']} characters long"
    return f"{name}: {str(error['msg']).removeprefix('Value error, ')}"
