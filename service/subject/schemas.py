from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel


class SubjectRequest(BaseModel):
    id: uuid.UUID
    model: str | None
    status: str
    created_at: datetime
    due_at: datetime
    completed_at: datetime | None
    samples_removed: int | None
    clean_version: int | None
    held_versions: list[Any]


class CleanVersion(BaseModel):
    number: int
    created_at: datetime
    state: str


class ModelReceipt(BaseModel):
    model: str
    samples_remaining: int
    tombstoned_since: datetime | None
    held_by_versions: list[int]
    first_clean_version: CleanVersion | None
    latest_is_clean: bool | None
    production_is_clean: bool | None
    cumulative_kl_nats: float
    cumulative_kl_bits: float
    releases_since_deletion: int


class SubjectReceipt(BaseModel):
    subject_key: str
    requests: list[SubjectRequest]
    models: list[ModelReceipt]
