"""Testsign's settings: ``SIGNBACK_TESTSIGN_*``."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from receiver.settings import ProviderSettings, http_base_url


class TestsignSettings(ProviderSettings):
    __test__ = False  # not a test class, despite its name

    model_config = SettingsConfigDict(env_prefix="SIGNBACK_TESTSIGN_")

    base_url: str = "https://api.testsign.invalid"
    client_id: str | None = None  # OAuth client credentials for the API
    client_secret: SecretStr | None = None
    timeout: float = 10.0
    # Comma-separated: the secrets a callback may be signed with (ours rotate too).
    secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    tolerance_seconds: float = Field(default=300.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return http_base_url(value)

    @field_validator("secrets", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
