"""Settings read from the environment."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from typing import Annotated, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_TINKER_BASE_URL = "https://tinker.thinkingmachines.dev/services/tinker-prod"
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


class InsecureSettingsError(ValueError):
    """Settings that would expose the API without authentication."""


class Settings(BaseSettings):
    """Everything the service reads from its environment, with units in names."""

    model_config = SettingsConfigDict(
        env_prefix="RECOVERY_", extra="ignore", populate_by_name=True
    )

    database_url: str = "sqlite+aiosqlite:///./recovery.db"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    allow_insecure: bool = False
    migrate_on_start: bool = True

    max_concurrent: int = Field(default=1, ge=1, le=1000)
    lease_ms: int = Field(default=30_000, ge=500)
    poll_concurrency: int = Field(default=256, ge=1, le=10_000)
    poll_batch_size: int = Field(default=1_000, ge=1, le=50_000)
    monitor_idle_ms: int = Field(default=1_000, ge=10)
    heartbeat_interval_ms: int = Field(default=10_000, ge=100)
    shutdown_grace_ms: int = Field(default=10_000, ge=0)

    webhook_secret: SecretStr | None = None
    webhook_allow_private: bool = False
    webhook_timeout_ms: int = Field(default=10_000, ge=100)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_backoff_ms: int = Field(default=1_000, ge=1)

    event_retention_hours: float = Field(default=24 * 14, gt=0)
    sse_keepalive_ms: int = Field(default=15_000, ge=100)
    sse_retry_ms: int = Field(default=2_000, ge=0)
    sse_buffer_size: int = Field(default=1_000, ge=1)

    tinker_base_url: str = Field(
        default=DEFAULT_TINKER_BASE_URL, validation_alias="TINKER_BASE_URL"
    )
    tinker_api_key: SecretStr | None = Field(
        default=None, validation_alias="TINKER_API_KEY"
    )
    tinker_timeout_ms: int = Field(default=30_000, ge=100)
    tinker_max_connections: int = Field(default=256, ge=1)

    log_level: str = "INFO"

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [token.strip() for token in value.split(",") if token.strip()]
        return value

    @field_validator("tinker_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _refuse_open_public_address(self) -> Self:
        if (
            not self.api_tokens
            and not self.allow_insecure
            and not is_loopback(self.host)
        ):
            raise InsecureSettingsError(
                f"refusing to serve on {self.host} without authentication: set "
                "RECOVERY_API_TOKENS, or RECOVERY_ALLOW_INSECURE=true to accept "
                "an open API on a non-loopback address"
            )
        return self

    @cached_property
    def token_values(self) -> frozenset[str]:
        return frozenset(token.get_secret_value() for token in self.api_tokens)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
