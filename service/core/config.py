"""Settings: one ``Settings`` object, env prefix ``LETHE_``, ``__`` as the nested delimiter.

Nothing else in the project reads ``os.environ``.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRET = "change-me-development-only"


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class DatabaseSettings(BaseModel):
    url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/lethe"
    pool_size: int = 10
    max_overflow: int = 10
    echo: bool = False


class BrokerSettings(BaseModel):
    url: str = "redis://127.0.0.1:6379/0"
    # Must exceed the longest job; a task not acked within it is redelivered.
    visibility_timeout_s: int = 4 * 3600


class StorageSettings(BaseModel):
    root: Path = Path("var/artifacts")


class SecuritySettings(BaseModel):
    # Server secret: the HMAC key of subject keys and the dashboard's cookie signer.
    secret_key: str = PLACEHOLDER_SECRET
    session_max_age_s: int = 8 * 3600


class ApiSettings(BaseModel):
    max_body_bytes: int = 32 * 1024 * 1024
    # All request headers together (names and values); larger -> 431.
    max_header_bytes: int = 16 * 1024
    page_size_default: int = 50
    page_size_max: int = 500
    long_poll_max_s: int = 60


class PipelineSettings(BaseModel):
    scheduler_interval_s: float = 5.0
    heartbeat_interval_s: float = 5.0
    heartbeat_timeout_s: float = 60.0
    job_max_attempts: int = 3
    request_max_attempts: int = 3
    outbox_interval_s: float = 1.0
    sweeper_interval_s: float = 10.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LETHE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    environment: Environment = Environment.development
    embedded: bool = False
    log_level: str = "INFO"
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)

    @model_validator(mode="after")
    def _refuse_placeholders_in_production(self) -> "Settings":
        if self.environment is Environment.production:
            secret = self.security.secret_key
            if secret == PLACEHOLDER_SECRET or len(secret) < 32:
                raise ValueError(
                    "LETHE_SECURITY__SECRET_KEY must be set to a random value of at least "
                    "32 characters in production"
                )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
