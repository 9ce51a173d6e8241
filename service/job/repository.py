"""Queries of the job domain: jobs, the queue of deletion requests the scheduler batches, and
what each model holds of a set of subjects. No commits, no business rules."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from service.models import DeletionRequest, Job, JobStatus, Model, ModelVersion, OutboxMessage, RequestStatus, Sample, Split, VersionState

# Bound parameters per IN (...) list: far below PostgreSQL's and SQLite's limits.
IN_CHUNK = 1000


def _chunks(values: Sequence, size: int = IN_CHUNK) -> Iterable[Sequence]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def active_job(session: Session, model_id: int, *, for_update: bool = False) -> Job | None:
    q = select(Job).where(Job.active_key == model_id)
    if for_update:
        q = q.with_for_update()
    return session.execute(q).scalar_one_or_none()


def active_model_ids(session: Session) -> set[int]:
    return set(session.execute(select(Job.active_key).where(Job.active_key.is_not(None))).scalars())


def job_for_update(session: Session, job_id: uuid.UUID) -> Job | None:
    return session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()


def list_jobs(
    session: Session,
    *,
    model_id: int | None = None,
    status: str | None = None,
    limit: int = 50,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[Job]:
    """Newest first; ``before`` is the keyset position (created_at, id) of the previous page's last row."""
    q = select(Job)
    if model_id is not None:
        q = q.where(Job.model_id == model_id)
    if status is not None:
        q = q.where(Job.status == status)
    if before is not None:
        q = q.where(or_(Job.created_at < before[0], and_(Job.created_at == before[0], Job.id < before[1])))
    return list(session.execute(q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)).scalars())


def model_names(session: Session, model_ids: Iterable[int]) -> dict[int, str]:
    ids = sorted(set(model_ids))
    if not ids:
        return {}
    return dict(session.execute(select(Model.id, Model.name).where(Model.id.in_(ids))).all())


def version_numbers(session: Session, version_ids: Iterable[int | None]) -> dict[int, int]:
    ids = sorted({v for v in version_ids if v is not None})
    if not ids:
        return {}
    return dict(session.execute(select(ModelVersion.id, ModelVersion.number).where(ModelVersion.id.in_(ids))).all())


def queued_requests_for_update(session: Session, *, wait: bool = False) -> list[DeletionRequest]:
    """Every ``queued`` request, oldest first, row-locked; rows another scheduler holds are
    skipped, or (``wait``, for "run now") waited for, in the same order (no deadlock)."""
    return list(
        session.execute(
            select(DeletionRequest)
            .where(DeletionRequest.status == RequestStatus.queued.value)
            .order_by(DeletionRequest.created_at, DeletionRequest.id)
            .with_for_update(skip_locked=not wait)
        ).scalars()
    )


@dataclass(frozen=True)
class Holding:
    """What one model holds of one subject."""

    samples: int
    core: int
    user: int


def holdings(session: Session, subject_keys: Iterable[str]) -> dict[str, dict[int, Holding]]:
    """subject key -> model id -> sample counts, in one grouped query per 1,000 keys."""
    keys = sorted(set(subject_keys))
    out: dict[str, dict[int, Holding]] = {}
    for part in _chunks(keys):
        rows = session.execute(
            select(
                Sample.subject_key,
                Sample.model_id,
                func.count(),
                func.count().filter(Sample.split == Split.core.value),
                func.count().filter(Sample.split == Split.user.value),
            )
            .where(Sample.subject_key.in_(part))
            .group_by(Sample.subject_key, Sample.model_id)
        ).all()
        for key, model_id, n, core, user in rows:
            out.setdefault(key, {})[model_id] = Holding(int(n), int(core), int(user))
    return out


def requests_by_ids(session: Session, ids: Iterable[uuid.UUID], *, status: str | None = None, for_update: bool = False) -> list[DeletionRequest]:
    ids = list(ids)
    if not ids:
        return []
    q = select(DeletionRequest).where(DeletionRequest.id.in_(ids))
    if status is not None:
        q = q.where(DeletionRequest.status == status)
    if for_update:
        q = q.with_for_update()
    return list(session.execute(q.order_by(DeletionRequest.created_at)).scalars())


def processing_requests(session: Session, job_id: uuid.UUID) -> list[DeletionRequest]:
    return list(
        session.execute(
            select(DeletionRequest)
            .where(DeletionRequest.job_id == job_id, DeletionRequest.status == RequestStatus.processing.value)
            .with_for_update()
        ).scalars()
    )


def count_queued_for_model(session: Session, model_id: int) -> int:
    return session.execute(
        select(func.count()).select_from(DeletionRequest).where(
            DeletionRequest.status == RequestStatus.queued.value,
            or_(DeletionRequest.model_id == model_id, DeletionRequest.model_id.is_(None)),
        )
    ).scalar_one()


def count_held_for_model(session: Session, model_id: int, prefix: str) -> int:
    """Queued requests the scheduler holds (``error`` starts with ``prefix``) for the model."""
    return session.execute(
        select(func.count()).select_from(DeletionRequest).where(
            DeletionRequest.status == RequestStatus.queued.value, DeletionRequest.error.startswith(prefix, autoescape=True),
            or_(DeletionRequest.model_id == model_id, DeletionRequest.model_id.is_(None)),
        )
    ).scalar_one()


def newest_live_version(session: Session, model_id: int) -> ModelVersion | None:
    return session.execute(
        select(ModelVersion)
        .where(ModelVersion.model_id == model_id, ModelVersion.state == VersionState.live.value)
        .order_by(ModelVersion.number.desc())
        .limit(1)
    ).scalar_one_or_none()


def unfinished_jobs_for_update(session: Session) -> list[Job]:
    """``running`` and ``queued`` jobs, locked (rows another sweeper holds are skipped)."""
    return list(session.execute(
        select(Job).where(Job.status.in_([JobStatus.running.value, JobStatus.queued.value])).with_for_update(skip_locked=True)
    ).scalars())


def last_outbox_message(session: Session, task_id: str) -> OutboxMessage | None:
    return session.execute(
        select(OutboxMessage).where(OutboxMessage.task_id == task_id).order_by(OutboxMessage.id.desc()).limit(1)
    ).scalar_one_or_none()


def unfinished_checkpoints(session: Session) -> list[dict]:
    return [cp or {} for cp in session.execute(
        select(Job.checkpoint).where(Job.status.in_([JobStatus.running.value, JobStatus.queued.value]))
    ).scalars()]


def subjects_of_requests(session: Session, request_ids: Sequence[uuid.UUID]) -> list[str]:
    if not request_ids:
        return []
    return sorted(set(session.execute(select(DeletionRequest.subject_key).where(DeletionRequest.id.in_(request_ids))).scalars()))


def label_owners(session: Session, model_id: int, label: int) -> tuple[list[str], list[str], int]:
    """For a class request: the subjects holding ``user`` samples of ``label``, those of them who
    hold samples of another label too, and how many other labels the ``user`` split has."""
    owners = sorted(session.scalars(select(Sample.subject_key).distinct().where(
        Sample.model_id == model_id, Sample.split == Split.user.value, Sample.label == label)))
    mixed: list[str] = []
    for part in _chunks(owners):
        mixed += session.scalars(select(Sample.subject_key).distinct().where(
            Sample.model_id == model_id, Sample.subject_key.in_(part), Sample.label != label))
    others = session.scalar(select(func.count(func.distinct(Sample.label))).where(
        Sample.model_id == model_id, Sample.split == Split.user.value, Sample.label != label))
    return owners, sorted(mixed), int(others or 0)


def user_labels(session: Session, model_id: int) -> set[int]:
    """The labels the model's ``user`` split still holds (the classes a class request can leave)."""
    return {int(v) for v in session.scalars(select(Sample.label).distinct().where(
        Sample.model_id == model_id, Sample.split == Split.user.value))}


def subject_holdings(session: Session, model_id: int, keys: Sequence[str]) -> dict[str, dict]:
    """Per subject: its samples in the model, by split, and its lowest ``user`` sample id (the
    collect step's query)."""
    out = {k: {"samples": 0, "core": 0, "user": 0, "min_user_sample_id": None} for k in keys}
    for part in _chunks(list(keys)):
        rows = session.execute(
            select(
                Sample.subject_key,
                func.count(),
                func.count().filter(Sample.split == Split.core.value),
                func.count().filter(Sample.split == Split.user.value),
                func.min(Sample.id).filter(Sample.split == Split.user.value),
            )
            .where(Sample.model_id == model_id, Sample.subject_key.in_(part))
            .group_by(Sample.subject_key)
        ).all()
        for key, n, core, user, min_user in rows:
            out[key] = {"samples": int(n), "core": int(core), "user": int(user), "min_user_sample_id": min_user}
    return out


def unacknowledged_failure(session: Session, model_id: int) -> Job | None:
    """The newest failed job of the model that no operator acknowledged (it stops the line)."""
    return session.execute(
        select(Job).where(Job.model_id == model_id, Job.status == JobStatus.failed.value, Job.acknowledged_at.is_(None))
        .order_by(Job.finished_at.desc().nulls_last(), Job.created_at.desc()).limit(1)
    ).scalar()


def stopped_model_ids(session: Session) -> set[int]:
    """Models with a failed job no operator acknowledged."""
    return set(session.execute(
        select(Job.model_id).where(Job.status == JobStatus.failed.value, Job.acknowledged_at.is_(None)).distinct()
    ).scalars())


def retired_model_ids(session: Session) -> set[int]:
    return set(session.execute(select(Model.id).where(Model.state == "retired")).scalars())


def open_requests_touching(session: Session, model_id: int) -> list[DeletionRequest]:
    """Row-locked, oldest first (the scheduler's order): the model's own open requests, and the
    queued requests for every model (``model_id`` NULL)."""
    open_ = [s.value for s in (RequestStatus.received, RequestStatus.awaiting_approval, RequestStatus.queued, RequestStatus.processing)]
    return list(session.execute(
        select(DeletionRequest)
        .where(or_(and_(DeletionRequest.model_id == model_id, DeletionRequest.status.in_(open_)),
                   and_(DeletionRequest.model_id.is_(None), DeletionRequest.status == RequestStatus.queued.value)))
        .order_by(DeletionRequest.created_at, DeletionRequest.id)
        .with_for_update()
    ).scalars())
