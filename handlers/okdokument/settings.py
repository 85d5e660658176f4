"""OKdokument's settings: ``SIGNBACK_OKDOKUMENT_*``."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from receiver.settings import ProviderSettings, http_base_url


class OkdokumentSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="SIGNBACK_OKDOKUMENT_")

    base_url: str = "https://apidev.okdokument.com"  # production: https://api.okdokument.com
    api_key: SecretStr | None = None  # needed to send PATCHes; callbacks come in without it
    timeout: float = 10.0
    # Rule (b): confirm an unsigned sendInfo claim with Document info before acting on it.
    confirm_callbacks: bool = True
    # The reconciler's Document info reads per minute (OKdokument documents no limit; this
    # keeps signback polite, shared by every process on the database).
    reads_per_minute: float = Field(default=120.0, gt=0)
    # The archive (docs/archive.md): once the signed PDF is archived and read back intact,
    # delete the document at OKdokument (its documented flow is download, then delete).
    # Off by default. Not for multi-round signing: later rounds need the document.
    delete_after_archive: bool = False

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return http_base_url(value)
