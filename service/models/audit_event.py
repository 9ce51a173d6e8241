from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base
from service.models._types import BigIntPK, JSONType, TZDateTime, utcnow


class AuditEvent(Base):
    """Append-only, hash-chained: hash = HMAC-SHA256(key[key_id], prev_hash || canonical JSON of
    the event). ``key_id`` names the HMAC key (the key itself is only in settings); NULL marks an
    event of the old unkeyed sha256 chain, re-linked once at startup."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(64), index=True)
    subject_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
