"""Queries on models, samples, versions and aliases. No commits here: the boundary owns the
transaction. Portable SQL only (PostgreSQL in production, SQLite in embedded mode)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case, func, insert, or_, select
from sqlalchemy.orm import Session, aliased

from service.core.pagination import CursorPosition, keyset_page
from service.models import (
    OPEN_REQUEST_STATUSES,
    AliasEvent,
    AuditCheckpoint,
    DeletionRequest,
    Model,
    ModelAlias,
    ModelVersion,
    Sample,
    SubjectTombstone,
    VersionArtifact,
)

# Bits of the alias set of a version, folded into its manifest ETag (see ``etag_row``).
ALIAS_BITS = {"latest": 1, "production": 2}


# ----------------------------------------------------------------------------- models
def model_by_name(session: Session, name: str) -> Model | None:
    return session.execute(select(Model).where(Model.name == name)).scalar_one_or_none()


def models_page(session: Session, position: CursorPosition | None, limit: int) -> list[Model]:
    """Newest first, ``limit + 1`` rows (see :func:`service.core.pagination.keyset_page`)."""
    return list(session.execute(keyset_page(select(Model), Model.created_at, Model.id, position, limit)).scalars())


def models_by_name(session: Session, *, after: str | None, limit: int) -> list[Model]:
    q = select(Model).order_by(Model.name).limit(limit + 1)
    if after:
        q = q.where(Model.name > after)
    return list(session.execute(q).scalars())


def sample_counts(session: Session, model_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {mid: {} for mid in model_ids}
    if not model_ids:
        return out
    rows = session.execute(
        select(Sample.model_id, Sample.split, func.count())
        .where(Sample.model_id.in_(list(model_ids)))
        .group_by(Sample.model_id, Sample.split)
    ).all()
    for mid, split, n in rows:
        out[mid][split] = int(n)
    return out


def latest_numbers(session: Session, model_ids: Sequence[int]) -> dict[int, int]:
    if not model_ids:
        return {}
    rows = session.execute(
        select(ModelVersion.model_id, func.max(ModelVersion.number))
        .where(ModelVersion.model_id.in_(list(model_ids)))
        .group_by(ModelVersion.model_id)
    ).all()
    return {mid: int(n) for mid, n in rows}


# ----------------------------------------------------------------------------- samples
def tombstones(session: Session, model_id: int, keys: Iterable[str]) -> list[tuple[str, datetime]]:
    return [
        (k, at)
        for k, at in session.execute(
            select(SubjectTombstone.subject_key, SubjectTombstone.deleted_at).where(
                SubjectTombstone.model_id == model_id, SubjectTombstone.subject_key.in_(list(keys))
            )
        ).all()
    ]


def drop_tombstones(session: Session, model_id: int, keys: Iterable[str]) -> None:
    session.execute(
        SubjectTombstone.__table__.delete().where(
            SubjectTombstone.model_id == model_id, SubjectTombstone.subject_key.in_(list(keys))
        )
    )


def open_request_subject(session: Session, model_id: int, keys: Iterable[str]) -> str | None:
    """The subject key of one open deletion request covering ``model_id`` (its own or a
    request for every model) among ``keys``, or ``None``."""
    return session.execute(
        select(DeletionRequest.subject_key)
        .where(
            DeletionRequest.subject_key.in_(list(keys)),
            DeletionRequest.status.in_([s.value for s in OPEN_REQUEST_STATUSES]),
            or_(DeletionRequest.model_id == model_id, DeletionRequest.model_id.is_(None)),
        )
        .limit(1)
    ).scalar()


def insert_samples(session: Session, rows: list[dict[str, Any]]) -> None:
    """Bulk insert through Core (one executemany, batched by the driver)."""
    session.execute(insert(Sample.__table__), rows)


# ----------------------------------------------------------------------------- versions
def version_by_id(session: Session, version_id: int) -> ModelVersion | None:
    return session.get(ModelVersion, version_id)


def version_by_number(session: Session, model_id: int, number: int) -> ModelVersion | None:
    return session.execute(
        select(ModelVersion).where(ModelVersion.model_id == model_id, ModelVersion.number == number)
    ).scalar_one_or_none()


def version_number(session: Session, version_id: int | None) -> int | None:
    if version_id is None:
        return None
    return session.execute(select(ModelVersion.number).where(ModelVersion.id == version_id)).scalar()


def versions_page(session: Session, model_id: int, position: CursorPosition | None, limit: int) -> list[ModelVersion]:
    stmt = select(ModelVersion).where(ModelVersion.model_id == model_id)
    return list(session.execute(keyset_page(stmt, ModelVersion.created_at, ModelVersion.id, position, limit)).scalars())


def versions_by_number(session: Session, model_id: int, *, before: int | None, limit: int) -> list[ModelVersion]:
    q = select(ModelVersion).where(ModelVersion.model_id == model_id)
    if before is not None:
        q = q.where(ModelVersion.number < before)
    return list(session.execute(q.order_by(ModelVersion.number.desc()).limit(limit + 1)).scalars())


def alias_mask_of(version_id_col: Any) -> Any:
    """SQL: the alias bits (``ALIAS_BITS``) currently pointing at ``version_id_col``."""
    a = aliased(ModelAlias)
    bits = case(*[(a.name == n, b) for n, b in ALIAS_BITS.items()], else_=0)
    return func.coalesce(select(func.sum(bits)).where(a.version_id == version_id_col).scalar_subquery(), 0)


def _etag_stmt(by_alias: bool):
    q = (
        select(ModelVersion.id, ModelVersion.sha256, ModelVersion.state, alias_mask_of(ModelVersion.id).label("mask"),
               select(func.max(AuditCheckpoint.id)).scalar_subquery().label("checkpoint_id"))
        .join(Model, Model.id == ModelVersion.model_id)
        .where(Model.name == bindparam("model_name"))
    )
    if by_alias:
        return q.join(ModelAlias, (ModelAlias.version_id == ModelVersion.id) & (ModelAlias.name == bindparam("alias")))
    return q.where(ModelVersion.number == bindparam("number"))


# Built once: constructing these per call (aliased entity, CASE, scalar subquery) cost ~1 ms of
# Python on every poll, five times the query itself.
_ETAG_BY_ALIAS = _etag_stmt(True)
_ETAG_BY_NUMBER = _etag_stmt(False)


def etag_row(session: Session, model_name: str, *, alias: str | None = None, number: int | None = None):
    """``(id, sha256, state, mask, checkpoint_id)`` of one version in ONE query, or ``None``
    (``checkpoint_id``: the latest audit checkpoint, which every manifest carries)."""
    if alias is not None:
        return session.execute(_ETAG_BY_ALIAS, {"model_name": model_name, "alias": alias}).first()
    return session.execute(_ETAG_BY_NUMBER, {"model_name": model_name, "number": number}).first()


# ----------------------------------------------------------------------------- aliases
def alias_row(session: Session, model_id: int, name: str, *, for_update: bool = False) -> ModelAlias | None:
    q = select(ModelAlias).where(ModelAlias.model_id == model_id, ModelAlias.name == name)
    if for_update:
        q = q.with_for_update()
    return session.execute(q).scalar_one_or_none()


def alias_names_for(session: Session, version_id: int) -> list[str]:
    return sorted(session.execute(select(ModelAlias.name).where(ModelAlias.version_id == version_id)).scalars())


def current_aliases(session: Session, model_id: int) -> dict[str, int]:
    rows = session.execute(
        select(ModelAlias.name, ModelVersion.number)
        .join(ModelVersion, ModelVersion.id == ModelAlias.version_id)
        .where(ModelAlias.model_id == model_id)
        .order_by(ModelAlias.name)
    ).all()
    return {name: int(n) for name, n in rows}


def alias_history(session: Session, model_id: int, limit: int) -> list[AliasEvent]:
    return list(
        session.execute(
            select(AliasEvent).where(AliasEvent.model_id == model_id).order_by(AliasEvent.id.desc()).limit(limit)
        ).scalars()
    )


def version_numbers(session: Session, model_id: int) -> dict[int, int]:
    return {
        vid: int(n)
        for vid, n in session.execute(
            select(ModelVersion.id, ModelVersion.number).where(ModelVersion.model_id == model_id)
        ).all()
    }


def private_artifacts(session: Session, version: ModelVersion) -> dict[str, str]:
    """Name -> uri of every private file ``version`` keeps (``private_uri`` alone for a version
    published before the artifacts were listed)."""
    rows = dict(session.execute(select(VersionArtifact.name, VersionArtifact.uri).where(VersionArtifact.version_id == version.id)).all())
    if not rows and version.private_uri:
        rows = {"weights": version.private_uri}
    return rows
