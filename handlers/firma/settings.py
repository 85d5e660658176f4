"""Firma.dev's settings: ``SIGNBACK_FIRMA_*``."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from receiver.settings import ProviderSettings, http_base_url


class FirmaSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="SIGNBACK_FIRMA_")

    base_url: str = "https://api.firma.dev/functions/v1/signing-request-api"
    api_key: SecretStr | None = None  # needed to send PATCHes to Firma
    timeout: float = 10.0
    # Comma-separated; several allowed so our side can rotate too (new first, old after).
    webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # {"<workspace id>": ["secret", …]} for /hooks/firma/<workspace id>, as JSON.
    workspace_secrets: Annotated[dict[str, list[SecretStr]], NoDecode] = Field(default_factory=dict)
    signature_tolerance_seconds: float = Field(default=300.0, gt=0)
    # Development only: accept unsigned Firma deliveries. Logged loudly at every start.
    insecure_skip_verification: bool = False
    # signback's own budgets per API key, shared by every process on the database. Firma
    # allows 120 writes and 200 reads a minute per key; the defaults keep a margin for the
    # jitter between a slot's start and the call's arrival at Firma.
    writes_per_minute: float = Field(default=100.0, gt=0, le=120)
    reads_per_minute: float = Field(default=150.0, gt=0, le=200)
    # The archive (docs/archive.md). Hosts Firma's pre-signed download links may point to
    # (besides the API's own host), comma-separated, "*.example.com" for the names under it:
    # the archive follows a link only there, and never sends the API key with it.
    download_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*.firma.dev", "*.supabase.co"]
    )
    # Archive the audit trail (GET /signing-requests/{id}/audit) beside the signed PDF.
    archive_audit_trail: bool = True

    @field_validator("download_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return http_base_url(value)

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("workspace_secrets", mode="before")
    @classmethod
    def _parse_workspaces(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON: {exc}") from None
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
