from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base
from service.models._types import JSONType, TZDateTime, new_uuid, utcnow


class DeletionRequest(Base):
    """A per-subject erasure request.

    ``subject_id`` (the raw id, personal data) is kept only while the request is open and is
    cleared when it reaches a final status; ``subject_key`` (HMAC) stays.
    ``open_key`` is ``"<subject_key>:<model_id or *>:<client_id>"`` while the request is open and
    NULL afterwards: its unique index makes "one open request per (subject, model, client)" a
    database fact. ``client_id`` is the owner (NULL only for requests filed before clients existed);
    ``idempotency_key`` is stored as ``"<client_id>:<key>"`` so keys are scoped per client.
    """

    __tablename__ = "deletion_requests"
    __table_args__ = (
        Index("ix_deletion_requests_status_created", "status", "created_at"),
        Index("ix_deletion_requests_model_status", "model_id", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_uuid)
    subject_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    subject_key: Mapped[str] = mapped_column(String(64), index=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    client_id: Mapped[int | None] = mapped_column(ForeignKey("clients.id"), nullable=True, index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(220), unique=True, nullable=True)
    open_key: Mapped[str | None] = mapped_column(String(100), unique=True, nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    source: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # samples | class (the subject is a class of the model: DESIGN §6.8); decided at intake from
    # the model's label -> subject mapping, again when the scheduler batches the request
    kind: Mapped[str] = mapped_column(String(16), default="samples", server_default="samples")
    # [{"model", "label", "version"}]: the classes this request made a model forget (the receipt)
    forgotten_classes: Mapped[list[Any] | None] = mapped_column(JSONType, nullable=True)
    decision_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    due_at: Mapped[datetime] = mapped_column(TZDateTime)
    approved_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    approved_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("jobs.id"), nullable=True, index=True)
    clean_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    samples_removed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Version numbers (per model) that were trained on the subject's data: the receipt.
    held_versions: Mapped[list[Any] | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    completed_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    # The one SLA extension an operator may grant (GDPR Art. 12(3)): when, by whom, why.
    extended_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    extended_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    extension_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)
