"""Read-only aggregates for the dashboard that no domain service offers (counts for the overview).

Everything else the views show comes from the domain services, the same calls the JSON API
makes. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import OPEN_REQUEST_STATUSES, DeletionRequest, Job, JobStatus, RequestStatus

# Days left at which an open request turns amber, and red (overdue is always red).
SLA_AMBER_DAYS = 10.0
SLA_RED_DAYS = 3.0
_OPEN = [s.value for s in OPEN_REQUEST_STATUSES]


def sla_level(days_left: float) -> str:
    if days_left < SLA_RED_DAYS:
        return "red"
    return "amber" if days_left < SLA_AMBER_DAYS else "green"


@dataclass(frozen=True)
class SlaRow:
    id: object
    status: str
    model_id: int | None
    due_at: datetime
    days_left: float

    @property
    def level(self) -> str:
        return sla_level(self.days_left)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def requests_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(DeletionRequest.status, func.count()).group_by(DeletionRequest.status)).all()
    return {status: n for status, n in rows}


def open_requests_by_due(session: Session, now: datetime, limit: int = 15) -> tuple[list[SlaRow], int, int]:
    """The open requests due first, the number overdue, and the number open."""
    rows = session.execute(
        select(DeletionRequest.id, DeletionRequest.status, DeletionRequest.model_id, DeletionRequest.due_at)
        .where(DeletionRequest.status.in_(_OPEN))
        .order_by(DeletionRequest.due_at, DeletionRequest.id)
        .limit(limit)
    ).all()
    out = [SlaRow(r.id, r.status, r.model_id, _aware(r.due_at), (_aware(r.due_at) - now).total_seconds() / 86400) for r in rows]
    overdue, total = session.execute(
        select(func.count().filter(DeletionRequest.due_at < now), func.count()).where(DeletionRequest.status.in_(_OPEN))
    ).one()
    return out, overdue, total


def failed_job_count(session: Session) -> int:
    return session.execute(select(func.count()).select_from(Job).where(Job.status == JobStatus.failed.value)).scalar_one()


def failed_request_count(by_status: dict[str, int]) -> int:
    return by_status.get(RequestStatus.failed.value, 0)
