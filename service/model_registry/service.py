"""Models, samples, versions and aliases (DESIGN §3, §5, §8). Never commits; never imports torch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.audit.service import append_event
from service.core.errors import Conflict, Gone, ModelNotFound, NotFound, SubjectTombstoned
from service.core.security import subject_key
from service.core.storage import ArtifactStore
from service.model_registry.schemas import AliasEventRead, AliasesRead, ModelCreate, ModelRead, VersionManifest
from service.model_registry.samples import encode_chunk
from service.model_registry.uploads import ParsedUpload
from service.models import (
    OPEN_REQUEST_STATUSES,
    AliasEvent,
    DeletionRequest,
    Model,
    ModelAlias,
    ModelVersion,
    Sample,
    SampleChunk,
    SubjectTombstone,
    VersionState,
)
from service.models._types import utcnow

ALIASES = ("latest", "production")
MOVABLE = ("production",)


class ModelExists(Conflict):
    type, title = "model-exists", "A model with this name exists"


class VersionNotFound(NotFound):
    type, title = "version-not-found", "Unknown model version"


class VersionRevoked(Gone):
    type, title = "version-revoked", "This version was revoked"


class AliasNotMovable(Conflict):
    type, title = "alias-not-movable", "This alias cannot be moved by hand"


class SubjectHasOpenRequest(Conflict):
    type, title = "subject-deletion-pending", "The subject has an open deletion request"


def _aware(at: datetime | None) -> datetime | None:
    return at if at is None or at.tzinfo is not None else at.replace(tzinfo=UTC)


# ----------------------------------------------------------------------------- models
def get_model(session: Session, name: str) -> Model:
    model = session.execute(select(Model).where(Model.name == name)).scalar_one_or_none()
    if model is None:
        raise ModelNotFound(f"No model named '{name}' is registered", model=name)
    return model


def register(session: Session, data: ModelCreate, actor: str) -> Model:
    model = Model(**{**data.model_dump(exclude={"method_config"}), "method_config": data.method_config.model_dump()})
    try:
        with session.begin_nested():
            session.add(model)
            session.flush()
    except IntegrityError:
        raise ModelExists(f"A model named '{data.name}' already exists") from None
    append_event(session, actor=actor, kind="model.registered", payload={"model": data.name, "architecture": data.architecture})
    return model


def to_read(session: Session, model: Model) -> ModelRead:
    counts = dict(session.execute(select(Sample.split, func.count()).where(Sample.model_id == model.id).group_by(Sample.split)).all())
    latest = session.execute(select(func.max(ModelVersion.number)).where(ModelVersion.model_id == model.id)).scalar()
    return ModelRead(
        name=model.name, architecture=model.architecture, architecture_config=model.architecture_config,
        input_shape=model.input_shape, num_classes=model.num_classes, linearize=model.linearize, method=model.method,
        method_config=model.method_config, batch_window_s=model.batch_window_s, batch_size=model.batch_size,
        auto_approve=model.auto_approve, auto_promote=model.auto_promote, sla_days=model.sla_days,
        samples={s: int(counts.get(s, 0)) for s in ("core", "user", "eval")}, latest_version=latest, created_at=model.created_at,
    )


def list_models(session: Session, *, after: str | None, limit: int) -> list[Model]:
    q = select(Model).order_by(Model.name).limit(limit + 1)
    if after:
        q = q.where(Model.name > after)
    return list(session.execute(q).scalars())


# ----------------------------------------------------------------------------- samples
def ingest(
    session: Session,
    store: ArtifactStore,
    secret: str,
    model: Model,
    upload: ParsedUpload,
    consent_renewed_at: datetime | None,
    actor: str,
) -> tuple[int, int, dict[str, int]]:
    """Guard, then write one chunk file and the sample rows (subject keys only)."""
    keys = [subject_key(secret, s) for s in upload.subject_ids]
    unique = sorted(set(keys))
    stones = session.execute(
        select(SubjectTombstone.subject_key, SubjectTombstone.deleted_at).where(
            SubjectTombstone.model_id == model.id, SubjectTombstone.subject_key.in_(unique)
        )
    ).all()
    renewed = _aware(consent_renewed_at)
    for key, deleted_at in stones:
        if renewed is None or renewed <= _aware(deleted_at):
            raise SubjectTombstoned(
                "A subject in this upload was deleted from this model; re-ingesting needs consent_renewed_at "
                "after the deletion",
                row=keys.index(key),
                deleted_at=_aware(deleted_at).isoformat(),
            )
    pending = session.execute(
        select(DeletionRequest.subject_key).where(
            DeletionRequest.subject_key.in_(unique),
            DeletionRequest.status.in_([s.value for s in OPEN_REQUEST_STATUSES]),
            or_(DeletionRequest.model_id == model.id, DeletionRequest.model_id.is_(None)),
        ).limit(1)
    ).scalar()
    if pending is not None:
        raise SubjectHasOpenRequest("A subject in this upload has an open deletion request for this model", row=keys.index(pending))
    art = store.put_bytes(encode_chunk(upload.x), prefix=f"samples/{model.id}", suffix=".safetensors")
    chunk = SampleChunk(model_id=model.id, uri=art.uri, sha256=art.sha256, n_rows=len(keys))
    session.add(chunk)
    session.flush()
    now = utcnow()
    session.execute(
        insert(Sample),
        [
            {"model_id": model.id, "subject_key": k, "split": s, "label": int(lbl), "chunk_id": chunk.id, "row": i, "created_at": now}
            for i, (k, s, lbl) in enumerate(zip(keys, upload.splits, upload.labels.tolist(), strict=True))
        ],
    )
    if stones:
        session.execute(
            SubjectTombstone.__table__.delete().where(
                SubjectTombstone.model_id == model.id, SubjectTombstone.subject_key.in_([k for k, _ in stones])
            )
        )
        for key, _ in stones:
            append_event(session, actor=actor, kind="subject.consent_renewed", subject_key=key,
                         payload={"model": model.name, "consent_renewed_at": renewed.isoformat()})
    by_split = {s: upload.splits.count(s) for s in sorted(set(upload.splits))}
    return len(keys), chunk.id, by_split


# ----------------------------------------------------------------------------- versions
def resolve_version(session: Session, model: Model, ref: str) -> ModelVersion:
    if ref in ALIASES:
        alias = session.get(ModelAlias, (model.id, ref))
        if alias is None:
            raise VersionNotFound(f"Model '{model.name}' has no '{ref}' version yet")
        return session.get(ModelVersion, alias.version_id)
    if not ref.isdigit():
        raise VersionNotFound(f"Version reference must be a number, 'latest' or 'production', got {ref!r}")
    v = session.execute(select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.number == int(ref))).scalar_one_or_none()
    if v is None:
        raise VersionNotFound(f"Model '{model.name}' has no version {ref}")
    return v


def live_or_gone(version: ModelVersion, model: Model) -> ModelVersion:
    if version.state == VersionState.revoked.value:
        raise VersionRevoked(
            f"Version {version.number} of '{model.name}' was revoked (it held data of deleted subjects)",
            revoked_at=_aware(version.revoked_at).isoformat() if version.revoked_at else None,
        )
    return version


def manifest(session: Session, model: Model, v: ModelVersion) -> VersionManifest:
    parent = session.execute(select(ModelVersion.number).where(ModelVersion.id == v.parent_id)).scalar() if v.parent_id else None
    aliases = list(session.execute(select(ModelAlias.name).where(ModelAlias.version_id == v.id)).scalars())
    return VersionManifest(
        model=model.name, number=v.number, sha256=v.sha256, size_bytes=v.size_bytes, format=v.format, parent=parent,
        created_at=v.created_at, architecture=model.architecture, architecture_config=model.architecture_config,
        linearize=model.linearize, input_shape=model.input_shape, num_classes=model.num_classes,
        target_scale=float((model.method_config or {}).get("target_scale", 1.0)), metrics=v.metrics or {}, bound=v.bound or {},
        state=v.state, revoked_at=v.revoked_at, aliases=sorted(aliases),
        weights_url=f"/v1/models/{model.name}/versions/{v.number}/weights",
    )


def manifest_etag(v: ModelVersion) -> str:
    return etag_of(v.id, v.sha256, v.state)


def etag_of(version_id: int, sha256: str, state: str) -> str:
    return f'"v{version_id}-{sha256[:16]}-{state}"'


def current_etag(session: Session, model_name: str, ref: str) -> str | None:
    """The manifest ETag in ONE query (the hot path of polling model servers), or None when the
    model/version does not exist (the caller then takes the full path for the right error)."""
    q = select(ModelVersion.id, ModelVersion.sha256, ModelVersion.state).join(Model, Model.id == ModelVersion.model_id).where(Model.name == model_name)
    if ref in ALIASES:
        q = q.join(ModelAlias, (ModelAlias.version_id == ModelVersion.id) & (ModelAlias.name == ref))
    elif ref.isdigit():
        q = q.where(ModelVersion.number == int(ref))
    else:
        return None
    row = session.execute(q).first()
    if row is None or row.state != VersionState.live.value:
        return None
    return etag_of(row.id, row.sha256, row.state)


def list_versions(session: Session, model: Model, *, before: int | None, limit: int) -> list[ModelVersion]:
    q = select(ModelVersion).where(ModelVersion.model_id == model.id)
    if before is not None:
        q = q.where(ModelVersion.number < before)
    return list(session.execute(q.order_by(ModelVersion.number.desc()).limit(limit + 1)).scalars())


# ----------------------------------------------------------------------------- aliases
def move_alias(session: Session, model: Model, alias: str, version: ModelVersion, actor: str, *, system: bool = False) -> None:
    if not system and alias not in MOVABLE:
        raise AliasNotMovable(f"'{alias}' is managed by publishing and cannot be moved by hand; only {list(MOVABLE)} can")
    if version.state != VersionState.live.value:
        raise Conflict(f"Version {version.number} is revoked; no alias can point at it", current_state=version.state)
    row = session.get(ModelAlias, (model.id, alias))
    before = row.version_id if row else None
    if before == version.id:
        return
    if row is None:
        session.add(ModelAlias(model_id=model.id, name=alias, version_id=version.id))
    else:
        row.version_id = version.id
        row.updated_at = utcnow()
    session.add(AliasEvent(model_id=model.id, alias=alias, from_version_id=before, to_version_id=version.id, actor=actor))
    append_event(session, actor=actor, kind="alias.moved", payload={"model": model.name, "alias": alias, "to": version.number})


def aliases(session: Session, model: Model) -> AliasesRead:
    num = dict(session.execute(select(ModelVersion.id, ModelVersion.number).where(ModelVersion.model_id == model.id)).all())
    current = {a.name: num[a.version_id] for a in session.execute(select(ModelAlias).where(ModelAlias.model_id == model.id)).scalars()}
    hist = session.execute(select(AliasEvent).where(AliasEvent.model_id == model.id).order_by(AliasEvent.id.desc()).limit(200)).scalars()
    return AliasesRead(
        aliases=current,
        history=[AliasEventRead(alias=e.alias, from_version=num.get(e.from_version_id), to_version=num[e.to_version_id], actor=e.actor, at=e.at) for e in hist],
    )


def version_payload(session: Session, model: Model, ref: str) -> dict[str, Any]:  # pragma: no cover - convenience
    return manifest(session, model, live_or_gone(resolve_version(session, model, ref), model)).model_dump(mode="json")
