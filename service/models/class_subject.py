from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base
from service.models._types import BigIntPK, TZDateTime, utcnow


class ClassSubject(Base):
    """A class of a ``subjects_are_classes`` model and the subject who *is* it (DESIGN §6.8, kind
    ``class``): a deletion request for that subject forgets the whole class. Subject keys only."""

    __tablename__ = "class_subjects"
    __table_args__ = (
        UniqueConstraint("model_id", "label", name="uq_class_subjects_model_label"),
        UniqueConstraint("model_id", "subject_key", name="uq_class_subjects_model_subject"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    label: Mapped[int] = mapped_column(Integer)
    subject_key: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class ClassTombstone(Base):
    """A forgotten class of a model: new samples carrying ``label`` are refused (409) unless the
    upload says the class's subject renewed consent after ``deleted_at`` (the label twin of
    :class:`~service.models.subject_tombstone.SubjectTombstone`). ``subject_key`` is the class's
    subject when one was mapped (NULL for a class an operator forgot with several owners)."""

    __tablename__ = "class_tombstones"
    __table_args__ = (UniqueConstraint("model_id", "label", name="uq_class_tombstones_model_label"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    label: Mapped[int] = mapped_column(Integer)
    subject_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    deleted_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    version_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    request_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("deletion_requests.id"), nullable=True)
