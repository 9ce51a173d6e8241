"""Reads of the audit log. Appends go through :func:`service.audit.service.append_event` only."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import AuditEvent


def events_after(
    session: Session, *, since: int, limit: int, kind: str | None = None, subject_key: str | None = None
) -> Sequence[AuditEvent]:
    """Up to ``limit + 1`` events with ``seq > since`` in seq order (the extra row tells the
    caller whether another page follows)."""
    q = select(AuditEvent).where(AuditEvent.seq > since)
    if kind is not None:
        q = q.where(AuditEvent.kind == kind)
    if subject_key is not None:
        q = q.where(AuditEvent.subject_key == subject_key)
    return session.execute(q.order_by(AuditEvent.seq).limit(limit + 1)).scalars().all()
