from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


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
    parent_version: int | None
    result_version: int | None
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(BaseModel):
    items: list[JobRead]
    next_cursor: str | None


class ZeroCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retrain: bool = True
    reason: str | None = None
