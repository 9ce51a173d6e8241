from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    model: str
    kind: str
    status: str
    step: str | None
    attempts: int
    max_attempts: int
    progress: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None
    requests: int
    reason: str | None = None
    parent_version: int | None
    result_version: int | None
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    acknowledge_reason: str | None = None


class JobPage(BaseModel):
    items: list[JobRead]
    next_cursor: str | None


class ClassForget(BaseModel):
    """Body of ``POST /v1/models/{name}/classes/{label}/forget``."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(..., min_length=1, max_length=1000, description="why the class is forgotten (kept in the audit log)")


class ModelRetire(BaseModel):
    """Body of ``POST /v1/models/{name}/retire``."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(..., min_length=1, max_length=1000, description="why the model is retired (kept in the audit log and the receipts)")


class RetireResult(BaseModel):
    model: str
    state: str = Field(description="retired")
    state_reason: str | None
    versions_revoked: list[int] = Field(description="the numbers of the versions revoked now (every one still live)")
    requests_completed: int = Field(description="open deletion requests for this model completed with the retired receipt")


class ZeroCreate(BaseModel):
    """Body of ``POST /v1/models/{name}/zero`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    retrain: bool = Field(True, description="afterwards refit the user weights on the remaining users (a retrain job)")
    reason: str | None = Field(None, max_length=1000)


class JobAcknowledge(BaseModel):
    """Body of ``POST /v1/jobs/{id}/acknowledge``: what the operator found (required)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S")
