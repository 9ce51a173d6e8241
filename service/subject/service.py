"""The deletion receipt of a subject (DESIGN §1 auditor, §6.5 cumulative bound).

Releases compose: the cumulative bound of a model is the sum of ``kl_nats`` over every version
published since (and including) the first version clean of the subject. A zeroed or retrained
release contributes exactly 0.
"""

from __future__ import annotations

import math

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from service.core.security import subject_key
from service.models import DeletionRequest, Model, ModelAlias, ModelVersion, Sample, SubjectTombstone
from service.subject.schemas import CleanVersion, ModelReceipt, SubjectReceipt, SubjectRequest


def _kl(bound: dict) -> float:
    v = (bound or {}).get("kl_nats", 0.0)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.inf


def receipt(session: Session, secret: str, subject_id: str, model_name: str | None = None) -> SubjectReceipt:
    key = subject_key(secret, subject_id)
    names = dict(session.execute(select(Model.id, Model.name)).all())
    reqs = session.execute(
        select(DeletionRequest).where(DeletionRequest.subject_key == key).order_by(DeletionRequest.created_at)
    ).scalars().all()
    numbers = dict(session.execute(select(ModelVersion.id, ModelVersion.number)).all())
    out_reqs = [
        SubjectRequest(
            id=r.id, model=names.get(r.model_id), status=r.status, created_at=r.created_at, due_at=r.due_at,
            completed_at=r.completed_at, samples_removed=r.samples_removed,
            clean_version=numbers.get(r.clean_version_id), held_versions=list(r.held_versions or []),
        )
        for r in reqs
    ]
    model_ids = set(session.execute(select(Sample.model_id).where(Sample.subject_key == key).distinct()).scalars())
    model_ids |= set(session.execute(select(SubjectTombstone.model_id).where(SubjectTombstone.subject_key == key)).scalars())
    model_ids |= {r.model_id for r in reqs if r.model_id is not None}
    model_ids |= {session.get(ModelVersion, r.clean_version_id).model_id for r in reqs if r.clean_version_id}
    receipts = []
    for mid in sorted(model_ids):
        name = names[mid]
        if model_name and name != model_name:
            continue
        remaining = session.execute(select(func.count()).select_from(Sample).where(Sample.model_id == mid, Sample.subject_key == key)).scalar_one()
        stone = session.execute(select(SubjectTombstone.deleted_at).where(SubjectTombstone.model_id == mid, SubjectTombstone.subject_key == key)).scalar()
        held: set[int] = set()
        for r in reqs:
            for h in r.held_versions or []:
                if isinstance(h, dict) and h.get("model") == name:
                    held.add(int(h["number"]))
                elif isinstance(h, int) and r.model_id == mid:
                    held.add(h)
        if remaining:
            first_id = session.execute(select(func.min(Sample.id)).where(Sample.model_id == mid, Sample.subject_key == key)).scalar()
            held |= set(session.execute(
                select(ModelVersion.number).where(ModelVersion.model_id == mid, ModelVersion.state == "live", ModelVersion.sample_watermark >= first_id)
            ).scalars())
        clean_ids = [r.clean_version_id for r in reqs if r.clean_version_id and r.status == "completed"]
        clean = session.execute(
            select(ModelVersion).where(ModelVersion.id.in_(clean_ids), ModelVersion.model_id == mid).order_by(ModelVersion.number).limit(1)
        ).scalar_one_or_none() if clean_ids and not remaining else None
        total = 0.0
        releases = 0
        latest_clean = production_clean = None
        if clean is not None:
            since = session.execute(select(ModelVersion.bound).where(ModelVersion.model_id == mid, ModelVersion.number >= clean.number)).scalars().all()
            releases = len(since)
            total = sum(_kl(b) for b in since)
            aliases = dict(session.execute(
                select(ModelAlias.name, ModelVersion.number).join(ModelVersion, ModelVersion.id == ModelAlias.version_id).where(ModelAlias.model_id == mid)
            ).all())
            latest_clean = aliases["latest"] >= clean.number if "latest" in aliases else None
            production_clean = aliases["production"] >= clean.number if "production" in aliases else None
        receipts.append(ModelReceipt(
            model=name, samples_remaining=remaining, tombstoned_since=stone, held_by_versions=sorted(held),
            first_clean_version=CleanVersion(number=clean.number, created_at=clean.created_at, state=clean.state) if clean else None,
            latest_is_clean=latest_clean, production_is_clean=production_clean,
            cumulative_kl_nats=total, cumulative_kl_bits=total / math.log(2) if math.isfinite(total) else math.inf,
            releases_since_deletion=releases,
        ))
    return SubjectReceipt(subject_key=key, requests=out_reqs, models=receipts)
