from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from service.core.types import INT32_MAX, PastDateTime, SubjectId

_LIN = re.compile(r"^(all|last:[1-9]\d*)$")


def _json_safe(value: Any, path: str = "") -> None:
    """Refuse what PostgreSQL's JSONB cannot hold (NaN, ±Infinity, NUL characters), so a bad
    value is a 422 naming it instead of a failed INSERT."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path or 'value'}: {value} is not a finite number")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(f"{path or 'value'}: strings cannot contain NUL characters")
    if isinstance(value, dict):
        for k, v in value.items():
            _json_safe(k, f"{path}.{k}" if path else "key")
            _json_safe(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _json_safe(v, f"{path}[{i}]")


class ForgettingSettings(BaseModel):
    """The forgetting settings of a model (the ``mixed_linear`` method's keys)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    l2: float = Field(1e-3, gt=0, description="μ")
    target_scale: float = Field(1.0, gt=0, description="κ")
    noise_std: float = Field(3e-4, ge=0, description="s")
    tol: float = Field(1e-9, gt=0)
    max_iter: int = Field(2000, ge=1)
    max_newton_steps: int = Field(4, ge=1)
    chunk_size: int = Field(4096, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    core_epochs: int = Field(30, ge=0)
    core_lr: float = Field(1e-2, gt=0)
    core_batch_size: int = Field(128, ge=1)
    max_kl_per_release: float = Field(1e-3, ge=0)
    max_accuracy_drop: float = Field(0.01, ge=0)
    seed: int = 0


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    architecture: str = Field(min_length=1, max_length=200,
                              description="a registry key: mlp, cnn, or an entry an administrator declared (never an import path)")
    architecture_config: dict[str, Any] = Field(default_factory=dict)
    input_shape: list[StrictInt] = Field(min_length=1, max_length=4)
    num_classes: int = Field(ge=2, le=100_000)
    linearize: str = "all"
    method: Literal["mixed_linear"] = "mixed_linear"
    method_config: ForgettingSettings = Field(default_factory=ForgettingSettings)
    batch_window_s: int = Field(3600, ge=0, le=INT32_MAX)
    batch_size: int = Field(100, ge=1, le=INT32_MAX)
    auto_approve: bool = True
    auto_promote: bool = True
    sla_days: int = Field(30, ge=1, le=365)

    @field_validator("architecture_config")
    @classmethod
    def _arch_config(cls, v: dict[str, Any]) -> dict[str, Any]:
        _json_safe(v)
        return v

    @field_validator("linearize")
    @classmethod
    def _lin(cls, v: str) -> str:
        if not _LIN.match(v):
            raise ValueError("must be 'all' or 'last:K' with K >= 1")
        return v

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v: list[int]) -> list[int]:
        if any(d < 1 or d > 100_000 for d in v):
            raise ValueError("every dimension must be between 1 and 100000")
        return v


class ModelRead(BaseModel):
    name: str
    architecture: str
    architecture_config: dict[str, Any]
    input_shape: list[int]
    num_classes: int
    linearize: str
    method: str
    method_config: dict[str, Any]
    batch_window_s: int
    batch_size: int
    auto_approve: bool
    auto_promote: bool
    sla_days: int
    samples: dict[str, int]
    latest_version: int | None
    created_at: datetime


class ModelPage(BaseModel):
    items: list[ModelRead]
    next_cursor: str | None


class SampleRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject_id: SubjectId
    split: Literal["core", "user", "eval"]
    label: StrictInt
    x: Any = Field(description="nested lists of numbers with the model's input_shape")


class SamplesJson(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: list[SampleRow] = Field(min_length=1)
    consent_renewed_at: PastDateTime | None = Field(None, description="When the subjects renewed their consent; not in the future")


class IngestResult(BaseModel):
    inserted: int
    chunk_id: int
    by_split: dict[str, int]


class VersionManifest(BaseModel):
    model: str
    number: int
    sha256: str
    size_bytes: int
    format: str
    parent: int | None
    created_at: datetime
    architecture: str
    architecture_config: dict[str, Any]
    linearize: str
    input_shape: list[int]
    num_classes: int
    target_scale: float
    metrics: dict[str, Any]
    bound: dict[str, Any]
    state: str
    revoked_at: datetime | None
    aliases: list[str]
    weights_url: str
    audit_checkpoint: dict[str, Any] | None = Field(
        default=None, description="The latest signed audit checkpoint (seq, head, at, key_id, signature)"
    )


class VersionPage(BaseModel):
    items: list[VersionManifest]
    next_cursor: str | None


class AliasMove(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=INT32_MAX)


class AliasEventRead(BaseModel):
    alias: str
    from_version: int | None
    to_version: int
    actor: str
    at: datetime


class AliasesRead(BaseModel):
    aliases: dict[str, int]
    history: list[AliasEventRead]
