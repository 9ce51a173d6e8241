from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base
from service.models._types import BigIntPK, TZDateTime, utcnow


class SubjectTombstone(Base):
    """The re-ingestion guard: a subject deleted from a model may not be re-ingested silently."""

    __tablename__ = "subject_tombstones"
    __table_args__ = (UniqueConstraint("model_id", "subject_key", name="uq_tombstone_model_subject"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    subject_key: Mapped[str] = mapped_column(String(64))
    deleted_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    request_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("deletion_requests.id"), nullable=True)
