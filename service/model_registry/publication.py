"""Versions, aliases and samples as a job publishes (DESIGN §4, §7, §13): the model-registry
domain's state changes, called by the worker's publish step in its one transaction.

Which versions held a subject (:func:`held_versions`, shared with the subject receipt): every
version when the subject has ``core`` samples (the core network saw them); otherwise those whose
``sample_watermark`` (the highest user sample id fitted) is at least the subject's lowest user
sample id. ``eval`` samples are never trained on.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from service.audit.service import append_event
from service.model_registry import manifest_cache
from service.model_registry.service import RETIRED, move_alias
from service.models import ClassSubject, Model, ModelAlias, ModelVersion, Sample, SubjectTombstone, VersionArtifact, VersionState
from service.webhook import events

IN_CHUNK = 1000


def held_versions(versions: Iterable[ModelVersion], holding: Mapping[str, Any]) -> list[ModelVersion]:
    """The versions among ``versions`` trained on a subject whose samples are ``holding``
    (``core``: count of core samples; ``min_user_sample_id``: lowest user sample id or None)."""
    versions = list(versions)
    if holding.get("core"):
        return versions
    low = holding.get("min_user_sample_id")
    if low is None:
        return []
    return [v for v in versions if v.sample_watermark is not None and v.sample_watermark >= low]


def lock_model(session: Session, model_id: int, *, share: bool = False) -> Model:
    return session.execute(select(Model).where(Model.id == model_id).with_for_update(read=share)).scalar_one()


def next_number(session: Session, model_id: int) -> int:
    return (session.execute(select(func.max(ModelVersion.number)).where(ModelVersion.model_id == model_id)).scalar() or 0) + 1


def add_version(session: Session, model: Model, *, job_id: uuid.UUID, parent_id: int | None, artifact: Mapping[str, Any],
                private_artifacts: Mapping[str, Mapping[str, Any]], metrics: dict, bound: dict,
                sample_watermark: int | None) -> ModelVersion:
    """Insert the next live version and the list of its private artifacts (the first one is
    mirrored in ``private_uri``)."""
    first = next(iter(private_artifacts.values()))
    version = ModelVersion(
        model_id=model.id, number=next_number(session, model.id), parent_id=parent_id, job_id=job_id,
        artifact_uri=artifact["uri"], private_uri=first["uri"], sha256=artifact["sha256"], size_bytes=artifact["size_bytes"],
        metrics=metrics, bound=bound, sample_watermark=sample_watermark, state=VersionState.live.value,
    )
    session.add(version)
    session.flush()
    events.version_event(session, events.VERSION_PUBLISHED, version, model.name)
    for name, art in private_artifacts.items():
        session.add(VersionArtifact(version_id=version.id, name=name, uri=art["uri"], sha256=art.get("sha256", ""),
                                    size_bytes=int(art.get("size_bytes", 0))))
    return version


def revoke_holders(session: Session, model: Model, version: ModelVersion, holdings: Mapping[str, Mapping[str, Any]],
                   *, reason: str, now: datetime) -> tuple[dict[str, list[int]], list[ModelVersion]]:
    """Revoke every older live version that held one of the subjects. Returns, per subject, the
    numbers of the versions that held it (revoked before or now), and the versions revoked now."""
    if not holdings:
        return {}, []
    older = list(session.execute(
        select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.id != version.id).order_by(ModelVersion.number)
    ).scalars())
    held_by: dict[str, list[int]] = {}
    to_revoke: dict[int, ModelVersion] = {}
    for key, holding in holdings.items():
        held = held_versions(older, holding)
        held_by[key] = [v.number for v in held]
        for v in held:
            if v.state == VersionState.live.value:
                to_revoke[v.id] = v
    revoke(session, model, to_revoke.values(), reason=reason, now=now)
    session.flush()
    return held_by, list(to_revoke.values())


def revoke(session: Session, model: Model, versions: Iterable[ModelVersion], *, reason: str, now: datetime) -> None:
    """Revoke ``versions`` (a ``version.revoked`` webhook event each); the caller flushes."""
    for v in versions:
        v.state = VersionState.revoked.value
        v.revoked_at = now
        v.revoked_reason = reason[:200]
        events.version_event(session, events.VERSION_REVOKED, v, model.name)


def move_aliases_on_publish(session: Session, model: Model, version: ModelVersion, revoked: Sequence[ModelVersion], actor: str) -> None:
    """``latest`` always; ``production`` when the model auto-promotes; any alias on a revoked
    version (an alias never points at a revoked version)."""
    revoked_ids = {v.id for v in revoked}
    move_alias(session, model, "latest", version, actor, system=True)
    aliases = session.execute(select(ModelAlias).where(ModelAlias.model_id == model.id)).scalars().all()
    names = {a.name for a in aliases}
    for a in aliases:
        if a.version_id in revoked_ids or (a.name == "production" and model.auto_promote):
            move_alias(session, model, a.name, version, actor, system=True)
    if model.auto_promote and "production" not in names:
        move_alias(session, model, "production", version, actor, system=True)


def forget_samples(session: Session, model: Model, holdings: Mapping[str, Mapping[str, Any]],
                   first_request: Mapping[str, uuid.UUID], now: datetime) -> None:
    """Tombstone the subjects the model held and delete their sample rows (the chunk files are
    rewritten by the purge that follows)."""
    keys = list(holdings)
    if not keys:
        return
    existing = set(session.execute(
        select(SubjectTombstone.subject_key).where(SubjectTombstone.model_id == model.id, SubjectTombstone.subject_key.in_(keys))
    ).scalars())
    for key in keys:
        if holdings[key]["samples"] and key not in existing:
            session.add(SubjectTombstone(model_id=model.id, subject_key=key, deleted_at=now, request_id=first_request.get(key)))
    for i in range(0, len(keys), IN_CHUNK):
        session.execute(delete(Sample).where(Sample.model_id == model.id, Sample.subject_key.in_(keys[i : i + IN_CHUNK])))
    session.flush()


def subjects_still_held(session: Session, keys: Iterable[str]) -> set[str]:
    """The subjects some model still has samples of."""
    keys = list(keys)
    if not keys:
        return set()
    return set(session.execute(select(Sample.subject_key).where(Sample.subject_key.in_(keys)).distinct()).scalars())


# ----------------------------------------------------------------------------- retirement
def retire(session: Session, model: Model, reason: str, actor: str, now: datetime) -> list[ModelVersion]:
    """The model registry's half of retiring a model (same transaction as the rest): every live
    version revoked (``version.revoked`` webhook event each, as a publish revokes), every alias
    cleared (an alias never points at a revoked version; audited ``alias.cleared``), the
    manifest caches told, every sample row and class mapping row deleted (the purge that follows
    rewrites the chunks and deletes the revoked versions' files), and the model's state set to
    ``retired`` with the reason. Returns the versions revoked now."""
    live = list(session.execute(select(ModelVersion).where(
        ModelVersion.model_id == model.id, ModelVersion.state == VersionState.live.value).order_by(ModelVersion.number)).scalars())
    revoke(session, model, live, reason=f"model retired: {reason}", now=now)
    numbers = {v.id: v.number for v in live}
    for alias in session.execute(select(ModelAlias).where(ModelAlias.model_id == model.id).with_for_update()).scalars().all():
        append_event(session, actor=actor, kind="alias.cleared",
                     payload={"model": model.name, "alias": alias.name, "from": numbers.get(alias.version_id), "reason": "model retired"})
        session.delete(alias)
    manifest_cache.changed(session)
    session.execute(delete(Sample).where(Sample.model_id == model.id))
    session.execute(delete(ClassSubject).where(ClassSubject.model_id == model.id))
    model.state, model.state_reason = RETIRED, reason[:2000]
    session.flush()
    return live

