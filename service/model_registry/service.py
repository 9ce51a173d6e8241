"""Models, samples, versions and aliases (DESIGN §3, §5, §8). Never commits; never imports torch.

Helpers the pipeline reuses: :func:`get_model`, :func:`resolve_version`, :func:`move_alias`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.audit.service import append_event, checkpoint_dict, latest_checkpoint
from service.core.config import Settings, get_settings
from service.core.errors import Conflict, Gone, ModelNotFound, NotFound, SubjectTombstoned, ValidationFailed
from service.core.pagination import decode_cursor, encode_cursor, split_page
from service.core.security import subject_key
from service.core.storage import ArtifactStore
from service.model_registry import architectures, classes, manifest_cache
from service.model_registry import repository as repo
from service.model_registry.samples import encode_chunk
from service.model_registry.schemas import (
    AliasEventRead,
    AliasesRead,
    ModelCreate,
    ModelPage,
    ModelRead,
    VersionManifest,
    VersionPage,
)
from service.model_registry.uploads import ParsedUpload
from service.models import AliasEvent, AuditCheckpoint, Model, ModelAlias, ModelVersion, SampleChunk, VersionState
from service.models._types import utcnow

ALIASES = ("latest", "production")
MOVABLE = ("production",)
SPLITS = ("core", "user", "eval")
ALIAS_HISTORY_LIMIT = 200


class ModelExists(Conflict):
    type, title = "model-exists", "A model with this name exists"


class MethodNotApplicable(ValidationFailed):
    type, title = "method-not-applicable", "The forgetting method cannot serve this model"


class VersionNotFound(NotFound):
    type, title = "version-not-found", "Unknown model version"


class AliasNotFound(NotFound):
    type, title = "alias-not-found", "Unknown alias"


class VersionRevoked(Gone):
    type, title = "version-revoked", "This version was revoked"


class AliasNotMovable(Conflict):
    type, title = "alias-not-movable", "This alias cannot be moved by hand"


class AliasTargetRevoked(Conflict):
    type, title = "alias-target-revoked", "An alias cannot point at a revoked version"


class ModelRetired(Conflict):
    type, title = "model-retired", "The model is retired"


class ModelRetiredGone(Gone):
    type, title = "model-retired", "The model is retired; no version of it is served"


RETIRED = "retired"


def ensure_not_retired(model: Model) -> None:
    """409 ``model-retired`` before anything is written for a retired model (samples, mapping,
    train, forget, checkpoint, zero)."""
    if model.state == RETIRED:
        raise ModelRetired(f"Model '{model.name}' is retired ({model.state_reason or 'no reason'}); it accepts nothing new",
                           model=model.name)


class SubjectHasOpenRequest(Conflict):
    type, title = "subject-deletion-pending", "The subject has an open deletion request"


def _aware(at: datetime | None) -> datetime | None:
    return at if at is None or at.tzinfo is not None else at.replace(tzinfo=UTC)


# ----------------------------------------------------------------------------- models
def get_model(session: Session, name: str) -> Model:
    model = repo.model_by_name(session, name)
    if model is None:
        raise ModelNotFound(f"No model named '{name}' is registered", model=name)
    return model


def register(session: Session, data: ModelCreate, actor: str, settings: Settings | None = None) -> Model:
    """Check the architecture against the registry and the limits (422, nothing written), then insert."""
    settings = settings or get_settings()
    problems = data.method_config.model_problems(data.architecture, data.num_classes)
    if problems:
        raise MethodNotApplicable(f"{data.method} cannot serve this model: " + "; ".join(m for _, m in problems),
                                  errors=[{"field": f, "message": m, "kind": MethodNotApplicable.type} for f, m in problems])
    method_config = data.stored_method_config()
    arch_config = architectures.validate(settings, data.architecture, data.architecture_config, data.input_shape,
                                         data.num_classes, data.linearize, method_config)
    model = Model(**{**data.model_dump(exclude={"method_config"}), "architecture_config": arch_config, "method_config": method_config})
    try:
        with session.begin_nested():
            session.add(model)
            session.flush()
    except IntegrityError:
        raise ModelExists(f"A model named '{data.name}' already exists", model=data.name) from None
    append_event(session, actor=actor, kind="model.registered", payload={"model": data.name, "architecture": data.architecture,
                                                                                "family": model.family, "method": model.method})
    return model


def checkpoint_received(session: Session, model: Model, uri: str, sha256: str, size: int, actor: str) -> None:
    """A new checkpoint for a ``standard`` or ``linear_head`` model: the model is ``ready`` again until the worker
    has validated it (an earlier rejection's reason is cleared)."""
    model.state, model.state_reason = "ready", None
    append_event(session, actor=actor, kind="model.checkpoint_uploaded",
                 payload={"model": model.name, "sha256": sha256, "size_bytes": size})


def mark_invalid(session: Session, model_id: int, reason: str, actor: str) -> None:
    """The worker found the uploaded checkpoint unusable: the model is ``invalid``, with the
    reason (visible in ``GET /v1/models/{name}``); nothing was published from it."""
    model = session.get(Model, model_id)
    if model is None:
        return
    model.state, model.state_reason = "invalid", reason[:2000]
    append_event(session, actor=actor, kind="model.invalid", payload={"model": model.name, "reason": reason[:2000]})


def _read(model: Model, counts: dict[str, int], latest: int | None, cls: tuple[int, list[int]] = (0, [])) -> ModelRead:
    return ModelRead(
        subjects_are_classes=bool(model.subjects_are_classes), classes_mapped=cls[0], forgotten_classes=cls[1],
        name=model.name, architecture=model.architecture, architecture_config=model.architecture_config,
        input_shape=model.input_shape, num_classes=model.num_classes, linearize=model.linearize, family=model.family, method=model.method,
        method_config=model.method_config, state=model.state, state_reason=model.state_reason, batch_window_s=model.batch_window_s, batch_size=model.batch_size,
        auto_approve=model.auto_approve, auto_promote=model.auto_promote, sla_days=model.sla_days,
        samples={s: int(counts.get(s, 0)) for s in SPLITS}, latest_version=latest, created_at=_aware(model.created_at),
    )


def to_read(session: Session, model: Model) -> ModelRead:
    return read_many(session, [model])[0]


def read_many(session: Session, models: list[Model]) -> list[ModelRead]:
    """``ModelRead`` of several models in five queries (no N+1)."""
    ids = [m.id for m in models]
    counts = repo.sample_counts(session, ids)
    latest = repo.latest_numbers(session, ids)
    cls = classes.summary(session, ids)
    return [_read(m, counts.get(m.id, {}), latest.get(m.id), cls.get(m.id, (0, []))) for m in models]


def list_models(session: Session, *, after: str | None, limit: int) -> list[Model]:
    """By name, ``limit + 1`` rows (the dashboard's list)."""
    return repo.models_by_name(session, after=after, limit=limit)


def page_models(session: Session, *, secret: str, cursor: str | None, limit: int) -> ModelPage:
    """Newest first, continued by a signed keyset cursor."""
    pos = decode_cursor(cursor, secret=secret, scope="models") if cursor else None
    page, nxt = split_page(repo.models_page(session, pos, limit), limit, lambda m: (m.created_at, m.id))
    return ModelPage(
        items=read_many(session, page),
        next_cursor=encode_cursor(*nxt, secret=secret, scope="models") if nxt else None,
    )


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
    """Guard, then write one chunk file and the sample rows (subject keys only).

    Guards (each a 409 and nothing written):

    * a subject with a tombstone for this model (it was deleted from it) unless the upload's
      ``consent_renewed_at`` is later than the tombstone's ``deleted_at``; an accepted renewal
      removes the tombstone (the subject is in the model again) and is audited;
    * a forgotten class (a label tombstone) unless consent was renewed after it for the class's
      subject, and on a ``subjects_are_classes`` model a row that breaks a mapped class
      (:func:`service.model_registry.classes.guard_upload`); an accepted renewal lifts the label
      tombstone (and maps the class's subject again);
    * a subject with an OPEN deletion request covering this model (the model's own or one for
      every model; received, awaiting_approval, queued, processing): samples added now could
      miss the running batch and outlive the request that asked for their deletion. Upload
      them again once the request is completed (that needs renewed consent) or cancelled.
      The guards read without locks: a request filed in the milliseconds between this check and
      the commit is still honoured unless its job had already collected the samples before the
      commit (the scheduler's batch window makes that practically unreachable; not locked, so
      ingestion never serialises with request intake).

    The chunk file is written before the rows; when the transaction then fails, the file is an
    orphan. That is harmless: files are content-addressed (a retry reuses the same name) and
    nothing points at it; the sweeper's purge of ``samples/<model>`` may delete it.
    """
    ensure_not_retired(model)
    keys = [subject_key(secret, s) for s in upload.subject_ids]
    unique = sorted(set(keys))
    renewed = _aware(consent_renewed_at)
    class_stones = classes.guard_upload(session, model, keys, upload.labels.tolist(), renewed)  # the more specific refusal first
    stones = repo.tombstones(session, model.id, unique)
    for key, deleted_at in stones:
        if renewed is None or renewed <= _aware(deleted_at):
            raise SubjectTombstoned(
                "A subject in this upload was deleted from this model; re-ingesting it needs "
                "consent_renewed_at later than the deletion",
                row=keys.index(key),
                deleted_at=_aware(deleted_at).isoformat(),
            )
    pending = repo.open_request_subject(session, model.id, unique)
    if pending is not None:
        raise SubjectHasOpenRequest(
            "A subject in this upload has an open deletion request for this model; upload its samples "
            "after the request is completed or cancelled",
            row=keys.index(pending),
        )
    art = store.put_bytes(encode_chunk(upload.x), prefix=f"samples/{model.id}", suffix=".safetensors")
    chunk = SampleChunk(model_id=model.id, uri=art.uri, sha256=art.sha256, n_rows=len(keys))
    session.add(chunk)
    session.flush()
    now = utcnow()
    repo.insert_samples(
        session,
        [
            {"model_id": model.id, "subject_key": k, "split": s, "label": lbl, "chunk_id": chunk.id, "row": i, "created_at": now}
            for i, (k, s, lbl) in enumerate(zip(keys, upload.splits, upload.labels.tolist(), strict=True))
        ],
    )
    if stones:
        repo.drop_tombstones(session, model.id, [k for k, _ in stones])
        for key, _ in stones:
            append_event(session, actor=actor, kind="subject.consent_renewed", subject_key=key,
                         payload={"model": model.name, "consent_renewed_at": renewed.isoformat()})
    classes.lift(session, model, class_stones, renewed, actor)
    by_split = {s: upload.splits.count(s) for s in sorted(set(upload.splits))}
    append_event(session, actor=actor, kind="samples.ingested",
                 payload={"model": model.name, "chunk_id": chunk.id, "sha256": art.sha256, "rows": len(keys), "by_split": by_split})
    return len(keys), chunk.id, by_split


# ----------------------------------------------------------------------------- versions
def resolve_version(session: Session, model: Model, ref: str) -> ModelVersion:
    """``ref`` is a version number, ``latest`` or ``production``; revoked versions included
    (see :func:`live_or_gone`)."""
    if ref in ALIASES:
        alias = repo.alias_row(session, model.id, ref)
        if alias is None and model.state == RETIRED:
            raise ModelRetiredGone(f"Model '{model.name}' is retired ({model.state_reason or 'no reason'}); no version of it is served",
                                   model=model.name)
        if alias is None:
            raise VersionNotFound(f"Model '{model.name}' has no '{ref}' version yet")
        return repo.version_by_id(session, alias.version_id)
    if not (ref.isascii() and ref.isdigit()):
        raise VersionNotFound(f"A version reference is a number, 'latest' or 'production', got {ref[:40]!r}")
    v = repo.version_by_number(session, model.id, int(ref)) if len(ref) <= 9 else None
    if v is None:
        raise VersionNotFound(f"Model '{model.name}' has no version {ref}")
    return v


def live_or_gone(version: ModelVersion, model: Model) -> ModelVersion:
    if version.state == VersionState.revoked.value:
        why = "the model was retired" if model.state == RETIRED else "it held data of deleted subjects"
        raise VersionRevoked(
            f"Version {version.number} of '{model.name}' was revoked ({why})",
            revoked_at=_aware(version.revoked_at).isoformat() if version.revoked_at else None,
        )
    return version


def manifest(session: Session, model: Model, v: ModelVersion) -> VersionManifest:
    return manifest_with_aliases(session, model, v, repo.alias_names_for(session, v.id), latest_checkpoint(session))


def manifest_with_etag(session: Session, model: Model, v: ModelVersion) -> tuple[VersionManifest, str]:
    """The manifest and its ETag, reading the alias set once."""
    names = repo.alias_names_for(session, v.id)
    cp = latest_checkpoint(session)
    etag = etag_of(v.id, v.sha256, v.state, sum(repo.ALIAS_BITS.get(n, 0) for n in names), cp.id if cp is not None else None)
    return manifest_with_aliases(session, model, v, names, cp), etag


def manifest_with_aliases(session: Session, model: Model, v: ModelVersion, aliases: list[str],
                          cp: AuditCheckpoint | None) -> VersionManifest:
    """Also carries ``cp``, the latest signed audit checkpoint, so a server that keeps manifests
    keeps checkpoints to verify an exported audit log against (DESIGN §10)."""
    return VersionManifest(
        model=model.name, number=v.number, sha256=v.sha256, size_bytes=v.size_bytes, format=v.format,
        parent=repo.version_number(session, v.parent_id), created_at=_aware(v.created_at),
        family=model.family, method=model.method, architecture=model.architecture, architecture_config=model.architecture_config,
        linearize=model.linearize, input_shape=model.input_shape, num_classes=model.num_classes,
        target_scale=float((model.method_config or {}).get("target_scale", 1.0)), metrics=v.metrics or {}, bound=v.bound or {},
        masked_classes=masked_classes(v.bound), state=v.state, revoked_at=_aware(v.revoked_at), aliases=aliases,
        weights_url=f"/v1/models/{model.name}/versions/{v.number}/weights",
        audit_checkpoint=checkpoint_dict(cp) if cp is not None else None,
    )


def masked_classes(bound: dict[str, Any] | None) -> list[int]:
    """The classes a version no longer knows, from its bound (written once, at publish)."""
    got = (bound or {}).get("masked_classes") or []
    return sorted(int(c) for c in got if isinstance(c, int) and not isinstance(c, bool)) if isinstance(got, list) else []


def etag_of(version_id: int, sha256: str, state: str, alias_mask: int, checkpoint_id: int | None) -> str:
    """Strong ETag of a manifest. Everything in a manifest is immutable except its state, the
    aliases pointing at the version and the latest audit checkpoint it carries, so those are
    part of the tag (``masked_classes`` comes from the version's bound, written once at publish:
    the version id covers it) (a checkpoint is identified by its row id: a re-signature after a key
    rotation covers the same seq)."""
    return f'"v{version_id}-{sha256[:16]}-{state}-a{int(alias_mask)}-c{int(checkpoint_id or 0)}"'


def current_etag(session: Session, model_name: str, ref: str) -> str | None:
    """The manifest ETag in ONE query (the hot path of polling model servers), or None when the
    model/version does not exist or is revoked (the caller then takes the full path for the
    right error)."""
    if ref in ALIASES:
        row = repo.etag_row(session, model_name, alias=ref)
    elif ref.isascii() and ref.isdigit() and len(ref) <= 9:
        row = repo.etag_row(session, model_name, number=int(ref))
    else:
        return None
    if row is None or row.state != VersionState.live.value:
        return None
    return etag_of(row.id, row.sha256, row.state, row.mask, row.checkpoint_id)


def list_versions(session: Session, model: Model, *, before: int | None, limit: int) -> list[ModelVersion]:
    """Newest number first, ``limit + 1`` rows (the dashboard's list)."""
    return repo.versions_by_number(session, model.id, before=before, limit=limit)


def page_versions(session: Session, model: Model, *, secret: str, cursor: str | None, limit: int) -> VersionPage:
    """Newest first (creation order = number order), continued by a signed keyset cursor."""
    scope = f"versions:{model.id}"
    pos = decode_cursor(cursor, secret=secret, scope=scope) if cursor else None
    page, nxt = split_page(repo.versions_page(session, model.id, pos, limit), limit, lambda v: (v.created_at, v.id))
    return VersionPage(
        items=[manifest(session, model, v) for v in page],
        next_cursor=encode_cursor(*nxt, secret=secret, scope=scope) if nxt else None,
    )


# ----------------------------------------------------------------------------- aliases
def move_alias(session: Session, model: Model, alias: str, version: ModelVersion, actor: str, *, system: bool = False) -> bool:
    """Point ``alias`` at ``version`` and record it (alias history + audit ``alias.moved``).

    Refuses a revoked version (so a rollback can never bring deleted data back) and, unless
    ``system`` (the publish step), any alias but ``production``. Returns False when the alias
    already pointed there (nothing recorded). The alias row is locked for the move."""
    if alias not in ALIASES:
        raise AliasNotFound(f"Unknown alias '{alias}'; aliases are {list(ALIASES)}", alias=alias)
    if not system and alias not in MOVABLE:
        raise AliasNotMovable(f"'{alias}' is managed by publishing and cannot be moved by hand; only {list(MOVABLE)} can")
    if version.model_id != model.id:
        raise VersionNotFound(f"Version {version.number} does not belong to model '{model.name}'")
    if version.state != VersionState.live.value:
        raise AliasTargetRevoked(f"Version {version.number} is revoked; no alias can point at it", current_state=version.state)
    row = repo.alias_row(session, model.id, alias, for_update=True)
    if row is None:
        # First pointing of this alias: two movers may both find no row to lock. The loser of the
        # insert race waits on the winner's row, then moves it like any other (no 500).
        try:
            with session.begin_nested():
                session.add(ModelAlias(model_id=model.id, name=alias, version_id=version.id))
                session.flush()
        except IntegrityError:
            row = repo.alias_row(session, model.id, alias, for_update=True)
    before = row.version_id if row else None
    if before == version.id:
        return False
    if row is not None:
        row.version_id = version.id
        row.updated_at = utcnow()
    session.add(AliasEvent(model_id=model.id, alias=alias, from_version_id=before, to_version_id=version.id, actor=actor))
    session.flush()
    append_event(session, actor=actor, kind="alias.moved", payload={
        "model": model.name, "alias": alias, "from": repo.version_number(session, before), "to": version.number,
    })
    manifest_cache.changed(session)  # publish, revocation (which moves latest) and promotion all pass here
    return True


def aliases(session: Session, model: Model) -> AliasesRead:
    num = repo.version_numbers(session, model.id)
    return AliasesRead(
        aliases=repo.current_aliases(session, model.id),
        history=[
            AliasEventRead(alias=e.alias, from_version=num.get(e.from_version_id), to_version=num[e.to_version_id],
                           actor=e.actor, at=_aware(e.at))
            for e in repo.alias_history(session, model.id, ALIAS_HISTORY_LIMIT)
        ],
    )


def version_payload(session: Session, model: Model, ref: str) -> dict[str, Any]:
    """The manifest of a live version as JSON (410/404 problems otherwise)."""
    return manifest(session, model, live_or_gone(resolve_version(session, model, ref), model)).model_dump(mode="json")
