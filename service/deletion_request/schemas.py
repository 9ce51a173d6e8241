"""Request and response bodies of the deletion-request API."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.core.types import SubjectId
from service.models import RequestStatus


def _not_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("must not be blank")
    return value


class DeletionRequestCreate(BaseModel):
    """``model`` null means every model that holds the subject."""

    model_config = ConfigDict(extra="forbid")

    subject_id: SubjectId
    model: str | None = Field(default=None, min_length=1, max_length=64, description="Registered model name; null = all")
    reason: str | None = Field(default=None, max_length=2000)
    source: str | None = Field(default=None, max_length=200)

    _subject_not_blank = field_validator("subject_id", "model")(_not_blank)


class DeletionRequestDeny(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, description="Why the request is denied (kept in the audit)")

    _reason_not_blank = field_validator("reason")(_not_blank)


class DeletionRequestExtend(BaseModel):
    """Body of ``POST /v1/deletion-requests/{id}/extend``: the one SLA extension (GDPR Art. 12(3))."""

    model_config = ConfigDict(extra="forbid")

    days: int = Field(ge=1, le=366, description="Days added to due_at; at most pipeline.sla_extension_max_days")
    reason: str = Field(min_length=1, max_length=2000, description="Why (told to the subject; kept in the audit)")

    _reason_not_blank = field_validator("reason")(_not_blank)


class DeletionRequestRead(BaseModel):
    id: uuid.UUID
    subject_id: str | None = Field(description="The raw id; null once the request is closed")
    subject_key: str
    model: str | None
    client_id: int | None = Field(default=None, description="The client that filed it (its owner)")
    status: RequestStatus
    reason: str | None
    source: str | None
    kind: str = Field("samples", description="samples | class: the subject is a class of the model (subjects_are_classes), "
                      "so the request forgets the whole class")
    forgotten_classes: list[dict] = Field(default_factory=list, description='[{"model", "label", "version"}]: the classes this '
                                          "request made a model forget, and the first version that no longer knows them")
    decision_reason: str | None
    created_at: datetime
    due_at: datetime
    days_left: float = Field(description="Days until due_at; negative when overdue")
    overdue: bool
    approved_by: str | None
    approved_at: datetime | None
    job_id: uuid.UUID | None
    clean_version: int | None = Field(description="The first version of the model clean of the subject")
    samples_removed: int | None
    error: str | None
    attempts: int
    completed_at: datetime | None
    extended_at: datetime | None = Field(default=None, description="When the due date was extended (once at most)")
    extended_by: str | None = None
    extension_reason: str | None = None


class DeletionRequestPage(BaseModel):
    items: list[DeletionRequestRead]
    next_cursor: str | None
