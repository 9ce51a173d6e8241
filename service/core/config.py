"""Settings: one ``Settings`` object, env prefix ``LETHE_``, ``__`` as the nested delimiter.

Nothing else in the project reads ``os.environ``.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRET = "change-me-development-only"
PLACEHOLDER_AUDIT_HMAC_KEY = "change-me-audit-hmac-development-only"


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class DatabaseSettings(BaseModel):
    url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/lethe"
    pool_size: int = 10
    max_overflow: int = 10
    echo: bool = False
    # Test each pooled connection with a round trip (SELECT 1) at every checkout. Off: a
    # connection the server dropped fails the request using it (a 500, never a false 202) and
    # SQLAlchemy then discards the whole pool; connections are recycled after pool_recycle_s.
    pool_pre_ping: bool = False
    pool_recycle_s: int = 1800


class BrokerSettings(BaseModel):
    url: str = "redis://127.0.0.1:6379/0"
    # Must exceed the longest job; a task not acked within it is redelivered.
    visibility_timeout_s: int = 4 * 3600


class StorageSettings(BaseModel):
    """The artifact store (DESIGN §11). ``local``: a directory; ``s3``: S3-compatible object storage.

    S3 credentials are NOT settings: boto3's standard chain supplies them (AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws, instance or IRSA roles)."""

    backend: Literal["local", "s3"] = "local"
    # local backend: the artifact directory
    root: Path = Path("var/artifacts")
    # s3 backend
    bucket: str = ""
    prefix: str = ""
    endpoint_url: str | None = None  # e.g. http://minio:9000; None = AWS
    region: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    max_attempts: int = 3
    range_block_bytes: int = 8 * 1024 * 1024  # one ranged GET when streaming a sample chunk
    verify_writes: bool = True  # s3: read every object back and check its sha256 after writing it
    scratch_dir: Path | None = None  # local temp files of a worker (None: the system temp dir)
    # An unreferenced object is deleted only once nobody wrote it for this long (a concurrent
    # identical write of a content-addressed key is never lost).
    delete_grace_s: float = 600.0

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> "StorageSettings":
        if self.backend == "s3" and not self.bucket:
            raise ValueError("LETHE_STORAGE__BUCKET must be set when LETHE_STORAGE__BACKEND=s3")
        return self


class SecuritySettings(BaseModel):
    # Server secret: the HMAC key of subject keys and the dashboard's cookie signer.
    secret_key: str = PLACEHOLDER_SECRET
    session_max_age_s: int = 8 * 3600
    # A token lookup is cached per process this long: a revoked token stops working within it
    # (at once in the process that revoked it).
    token_cache_ttl_s: float = Field(default=10.0, ge=0.0, le=300.0)


class AuditSettings(BaseModel):
    """Keys of the audit chain (DESIGN §10). None of them is ever written to the database.

    * ``hmac_key``: the chain's link is HMAC-SHA256 with this key. ``hmac_previous_keys``: keys
      used before a rotation, still needed to verify older events. Each event stores the key's
      id (a fingerprint derived from the key), never the key.
    * ``signing_key``: Ed25519 private key (base64 of the 32-byte seed, or a PEM PKCS#8 block)
      that signs checkpoints. Empty means the well-known development key (refused in production).
    * ``checkpoint_interval_s``: the periodic checkpoint tick (beat); every publish signs one too.
    """

    hmac_key: str = PLACEHOLDER_AUDIT_HMAC_KEY
    hmac_previous_keys: list[str] = Field(default_factory=list)
    signing_key: str = ""
    checkpoint_interval_s: float = Field(default=300.0, gt=0)


class ApiSettings(BaseModel):
    max_body_bytes: int = 32 * 1024 * 1024
    # The body limit of POST /v1/models/{name}/checkpoint (a standard model's state_dict), its own:
    # a checkpoint is streamed to the artifact store, never held in memory.
    max_checkpoint_bytes: int = Field(default=1024 * 1024 * 1024, ge=1)
    # All request headers together (names and values); larger -> 431.
    max_header_bytes: int = 16 * 1024
    page_size_default: int = 50
    page_size_max: int = 500
    long_poll_max_s: int = 60
    # /metrics answers without a token only when this is true.
    public_metrics: bool = False
    # In-process manifest/ETag cache (service/model_registry/manifest_cache.py); off = every
    # manifest request reads the database (the benchmark's baseline).
    manifest_cache: bool = True
    # Cache hits answered ahead of FastAPI's routing (service/model_registry/fast_path.py); off =
    # every hit goes through the route (same answers: the benchmark's comparison).
    manifest_fast_path: bool = True
    # POST /v1/deletion-requests answered on the event loop when it can be (on PostgreSQL;
    # service/deletion_request/intake.py); off = every create takes the route (the benchmark's baseline).
    intake_fast_path: bool = True
    # Its pooled connections per API process. Each create waits for its commit's WAL flush
    # (~4 ms on the development VM); PostgreSQL flushes the commits waiting together at once, so
    # throughput grows with the creates in flight, which these bound.
    intake_connections: int = Field(default=16, ge=1, le=64)


class PipelineSettings(BaseModel):
    scheduler_interval_s: float = 5.0
    heartbeat_interval_s: float = 5.0
    heartbeat_timeout_s: float = 60.0
    job_max_attempts: int = 3
    request_max_attempts: int = 3
    outbox_interval_s: float = 1.0
    sweeper_interval_s: float = 10.0
    # Stop the line (DESIGN §12): a failed job no operator acknowledged blocks approvals and
    # automatic scheduling for its model.
    stop_the_line: bool = True
    # The one SLA extension of a request, at most this many days (GDPR Art. 12(3): two months).
    sla_extension_max_days: int = Field(default=60, ge=1, le=366)


class WebhookSettings(BaseModel):
    """Webhook deliveries (DESIGN §12): retries with exponential backoff and full jitter, then a
    dead letter. Targets resolving to loopback, link-local, private or reserved addresses are
    refused (at subscription and at each delivery) unless ``allow_private_targets``."""

    allow_private_targets: bool = False
    max_attempts: int = Field(default=8, ge=1, le=50)
    backoff_base_s: float = Field(default=10.0, ge=0.0)
    backoff_max_s: float = Field(default=3600.0, ge=0.0)
    timeout_s: float = Field(default=10.0, gt=0.0, le=60.0)
    max_response_bytes: int = Field(default=64 * 1024, ge=0)
    # A claimed delivery whose worker died is tried again after this (same webhook-id).
    lease_s: float = Field(default=60.0, gt=0.0)
    interval_s: float = Field(default=2.0, gt=0.0)
    batch: int = Field(default=50, ge=1)
    max_subscriptions_per_client: int = Field(default=20, ge=1)


class OpenDsrSettings(BaseModel):
    """OpenDSR processor endpoints. Callbacks are signed with RSA-SHA256: ``signing_key`` (PEM),
    or else a key generated once into ``key_file``. ``processor_domain`` goes into the
    ``X-OpenDSR-Processor-Domain`` header; ``public_url`` is where controllers reach /opendsr."""

    processor_domain: str = "localhost"
    public_url: str = "http://localhost:8000"
    signing_key: str = ""
    key_file: Path = Path("var/opendsr-signing-key.pem")
    # PEM certificate for the signing key, issued by a CA (the specification asks for one);
    # empty: a self-signed certificate is made from the key (development only).
    certificate: str = ""


class ArchitectureSettings(BaseModel):
    """Architectures beyond the built-ins (DESIGN §10). Requests name registry keys only."""

    # key -> "package.module:function", declared by the administrator, e.g.
    # LETHE_ARCHITECTURES__DECLARED='{"resnet_small": "acme_nets.resnet:small"}'. A key may itself
    # be a "module:function" string, so models registered before the registry keep working.
    declared: dict[str, str] = Field(default_factory=dict)
    # Also accept entry points installed in the group "lethe.architectures".
    entry_points: bool = True
    # A declared entry is validated at registration in a short-lived subprocess with these limits.
    probe_timeout_s: float = 60.0
    probe_memory_mb: int = 4096


class LimitsSettings(BaseModel):
    """What registration accepts (422 past any of these, the limit in the message)."""

    max_parameters: int = 20_000_000
    max_input_elements: int = 1_000_000
    max_layers: int = 64
    max_iterations: int = 100_000
    max_newton_steps: int = 50
    max_epochs: int = 1_000
    max_chunk_size: int = 1_000_000


class JobSettings(BaseModel):
    """How a job runs on a worker (DESIGN §10: a job can never take the API down)."""

    # Run each job in a child process of its own (embedded mode and workers alike).
    isolate: bool = True
    # Memory cap of a job's process in MiB (0 = none): RLIMIT_AS for CPU jobs plus an RSS watchdog
    # (the only guard for CUDA jobs, whose initialisation breaks under RLIMIT_AS).
    memory_limit_mb: int = 8192
    # "auto": RLIMIT_AS on CPU jobs and the watchdog; "rss": the watchdog only.
    memory_enforcement: Literal["auto", "rss"] = "auto"
    watchdog_interval_s: float = 0.25
    # CPU priority of a job's process (os.nice increment, 0-19): where jobs share cores with the
    # API (embedded mode), the API keeps answering promptly while a job computes.
    nice: int = Field(10, ge=0, le=19)
    # Keep one job process started ahead (Python, torch and the job code imported; no job, no
    # data, no database connection) so the next job does not wait for a process to start and
    # import: most of a small forget's latency otherwise. It holds that memory while idle.
    warm_process: bool = True


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
    audit: AuditSettings = Field(default_factory=AuditSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    architectures: ArchitectureSettings = Field(default_factory=ArchitectureSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    opendsr: OpenDsrSettings = Field(default_factory=OpenDsrSettings)

    @model_validator(mode="after")
    def _refuse_placeholders_in_production(self) -> "Settings":
        if self.environment is Environment.production:
            secret = self.security.secret_key
            if secret == PLACEHOLDER_SECRET or len(secret) < 32:
                raise ValueError(
                    "LETHE_SECURITY__SECRET_KEY must be set to a random value of at least "
                    "32 characters in production"
                )
            hmac_key = self.audit.hmac_key
            if hmac_key == PLACEHOLDER_AUDIT_HMAC_KEY or len(hmac_key) < 32:
                raise ValueError(
                    "LETHE_AUDIT__HMAC_KEY must be set to a random value of at least 32 characters in production"
                )
            if not self.audit.signing_key.strip():
                raise ValueError(
                    "LETHE_AUDIT__SIGNING_KEY must be set in production (base64 of a 32-byte Ed25519 seed, "
                    "or a PEM private key); the development key is public"
                )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
