from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base
from service.models._types import BigIntPK, TZDateTime, utcnow


class AuditCheckpoint(Base):
    """A signed statement "the chain had ``seq`` events and its head was ``head_hash`` at ``at``":
    Ed25519 over the canonical JSON of (seq, head, at, key_id). ``key_id`` names the signing key
    (a fingerprint of its public key)."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigIntPK, index=True)
    head_hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    key_id: Mapped[str] = mapped_column(String(32))
    signature: Mapped[str] = mapped_column(String(128))
