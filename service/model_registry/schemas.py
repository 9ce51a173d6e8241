from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator, model_validator

# The one exception to "service never imports workers": the torch-free method configs (DESIGN §6.8).
from workers.unlearning.methods import config_classes

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


# One config source (DESIGN §6.8): ``method_config`` is validated by the method's own config class,
# a discriminated union over every method's config, built when this module is imported (at app
# start). Unknown methods and unknown keys are a 422 naming the field.
_CONFIGS = config_classes()
MethodName = Literal.__getitem__(tuple(sorted(_CONFIGS)))  # type: ignore[misc]
MethodConfigUnion = Annotated[Union[tuple(_CONFIGS.values())], Field(discriminator="method")]  # type: ignore[misc]  # noqa: UP007


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    architecture: str = Field(min_length=1, max_length=200,
                              description="a registry key: mlp, cnn, or an entry an administrator declared (never an import path)")
    architecture_config: dict[str, Any] = Field(default_factory=dict)
    input_shape: list[StrictInt] = Field(min_length=1, max_length=4)
    num_classes: int = Field(ge=2, le=100_000)
    linearize: str = "all"
    method: MethodName = Field("mixed_linear", description="a registered forgetting method (its config is method_config)")
    method_config: MethodConfigUnion = Field(description="the method's settings; unknown keys are refused")
    # After method_config: its validator reads the validated config (what the method serves).
    family: Literal["mixed_linear", "linear_head", "standard"] | None = Field(
        None, validate_default=True,
        description="what the user brings (DESIGN §6.8); must be one the method serves; omitted: the method's only family")
    subjects_are_classes: bool = Field(
        False, description="each class is a person (face, speaker, author): a label -> subject mapping "
        "(POST /v1/models/{name}/class-subjects) makes a deletion request for such a subject forget the whole class; "
        "the method must serve the request kind 'class' (svd_projection)")
    batch_window_s: int = Field(3600, ge=0, le=INT32_MAX)
    batch_size: int = Field(100, ge=1, le=INT32_MAX)
    auto_approve: bool = True
    auto_promote: bool = True
    sla_days: int = Field(30, ge=1, le=365)

    @field_validator("subjects_are_classes")
    @classmethod
    def _class_kind(cls, v: bool, info: ValidationInfo) -> bool:
        config = info.data.get("method_config")
        if v and config is not None and "class" not in type(config).kinds:
            raise ValueError(f"method {config.method!r} forgets samples, not classes (its kinds: {sorted(type(config).kinds)}); "
                             "subjects_are_classes needs a method of kind 'class'")
        return v

    @field_validator("architecture_config")
    @classmethod
    def _arch_config(cls, v: dict[str, Any]) -> dict[str, Any]:
        _json_safe(v)
        return v

    @model_validator(mode="before")
    @classmethod
    def _method_into_config(cls, data: Any) -> Any:
        """The config's discriminator is the model's ``method``: clients do not repeat it."""
        if isinstance(data, dict):
            method = data.get("method", "mixed_linear")
            raw = data.get("method_config") or {}
            if isinstance(raw, dict) and isinstance(method, str):
                data = {**data, "method_config": {"method": method, **raw}}
        return data

    @field_validator("method_config")
    @classmethod
    def _same_method(cls, v: Any, info: ValidationInfo) -> Any:
        method = info.data.get("method")
        if method is not None and v.method != method:
            raise ValueError(f"method_config.method {v.method!r} is not the model's method {method!r}")
        return v

    @field_validator("family")
    @classmethod
    def _family_served(cls, v: str | None, info: ValidationInfo) -> str | None:
        config = info.data.get("method_config")
        if config is None:  # the method or its config is already refused
            return v
        served = type(config).families
        if v is None:
            if len(served) != 1:
                raise ValueError(f"method {config.method!r} serves the families {sorted(served)}: say which")
            return next(iter(served))
        if v not in served:
            raise ValueError(f"method {config.method!r} does not serve family {v!r}; it serves {sorted(served)}")
        return v

    def stored_method_config(self) -> dict[str, Any]:
        """Every key with its value or default; ``method`` is its own column."""
        return self.method_config.model_dump(mode="json", exclude={"method"})

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
    family: str
    method: str
    method_config: dict[str, Any]
    subjects_are_classes: bool = False
    classes_mapped: int = Field(0, description="labels with a subject in the label -> subject mapping")
    forgotten_classes: list[int] = Field(default_factory=list, description="labels forgotten (tombstoned): new samples carrying them are refused")
    state: str = Field(description="ready | invalid (an uploaded checkpoint failed validation; state_reason says why) | "
                       "retired (POST /v1/models/{name}/retire: nothing served, nothing new accepted; state_reason is the reason)")
    state_reason: str | None
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


class ClassSubjectRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: StrictInt = Field(ge=0, le=INT32_MAX)
    subject_id: SubjectId


class ClassSubjectsUpload(BaseModel):
    """Body of ``POST /v1/models/{name}/class-subjects``: which subject each class is. Stored as
    subject keys (HMAC), never the raw ids."""

    model_config = ConfigDict(extra="forbid")

    classes: list[ClassSubjectRow] = Field(min_length=1, max_length=100_000)


class ClassSubjectsResult(BaseModel):
    mapped: int = Field(description="new label -> subject pairs stored")
    unchanged: int = Field(description="pairs already stored exactly so (an idempotent re-upload)")
    classes_mapped: int = Field(description="labels of the model with a subject now")


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
    family: str
    method: str
    architecture: str
    architecture_config: dict[str, Any]
    linearize: str
    input_shape: list[int]
    num_classes: int
    target_scale: float
    metrics: dict[str, Any]
    bound: dict[str, Any]
    masked_classes: list[int] = Field(
        default_factory=list, description="classes this version no longer knows: their logits are -inf in the served model "
        "(forgotten by a class request; fixed per version, so covered by the version's ETag)")
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
