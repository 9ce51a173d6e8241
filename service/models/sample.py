from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base
from service.models._types import BigIntPK, TZDateTime, utcnow


class SampleChunk(Base):
    """A safetensors file in the artifact store holding the inputs of many samples."""

    __tablename__ = "sample_chunks"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    uri: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64))
    n_rows: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class Sample(Base):
    """One training example. Holds the subject *key* (HMAC), never the raw subject id."""

    __tablename__ = "samples"
    __table_args__ = (
        Index("ix_samples_model_subject", "model_id", "subject_key"),
        Index("ix_samples_model_split", "model_id", "split"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    subject_key: Mapped[str] = mapped_column(String(64))
    split: Mapped[str] = mapped_column(String(16))
    label: Mapped[int] = mapped_column(Integer)
    chunk_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), ForeignKey("sample_chunks.id"), index=True)
    row: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
