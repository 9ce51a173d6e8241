"""People who are classes (DESIGN §6.8, kind ``class``; issue 14): the label -> subject mapping
of a ``subjects_are_classes`` model, the guards it puts on sample uploads, and the tombstones
of forgotten classes. The model-registry domain owns ``class_subjects`` and
``class_tombstones``; publish calls :func:`forget_classes` in its one transaction.

Invariant of a mapped class (checked by the mapping upload and by every later sample upload):
every sample carrying the label belongs to the class's subject, and that subject's samples all
carry the label. So the subject's deletion request removes exactly the class, the job's
``removed`` set is the whole class (what ``svd_projection`` needs), and publish's per-subject
steps (revocation, receipts) hold for the class as they do for any subject.

Stored as subject keys (HMAC), never the raw ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from service.audit.service import append_event
from service.core.errors import Conflict, ValidationFailed
from service.core.security import subject_key
from service.models import ACTIVE_JOB_STATUSES, ClassSubject, ClassTombstone, Job, Model, Sample, Split
from service.models._types import utcnow
from workers.unlearning.methods import config_classes  # torch-free: the configs only

IN_CHUNK = 1000


class SubjectsNotClasses(Conflict):
    type, title = "subjects-not-classes", "The model was not registered with subjects_are_classes"


class NoClassKind(ValidationFailed):
    type, title = "no-class-forgetting", "The model's method cannot forget a class"


class UnknownClassLabel(ValidationFailed):
    type, title = "unknown-class-label", "The label is not a class the model holds training samples of"


class ClassMappingConflict(Conflict):
    type, title = "class-mapping-conflict", "A label or a subject is mapped twice"


class ClassSubjectMismatch(Conflict):
    type, title = "class-subject-mismatch", "A class's samples must all be its subject's, and only those"


class ClassTombstoned(Conflict):
    type, title = "class-deleted", "This class was forgotten by the model"


class ClassBeingForgotten(Conflict):
    type, title = "class-being-forgotten", "A job of the model is forgetting this class"


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def serves_classes(model: Model) -> bool:
    cfg = config_classes().get(model.method)
    return cfg is not None and "class" in cfg.kinds


# ----------------------------------------------------------------------------- reads
def mapping(session: Session, model_id: int) -> dict[int, str]:
    """label -> subject key of the model's mapped classes."""
    return dict(session.execute(select(ClassSubject.label, ClassSubject.subject_key).where(ClassSubject.model_id == model_id)).all())


def labels_of(session: Session, model_id: int, keys: Iterable[str]) -> dict[str, int]:
    """subject key -> label for the subjects among ``keys`` who are a class of the model."""
    keys = list(keys)
    out: dict[str, int] = {}
    for i in range(0, len(keys), IN_CHUNK):
        out.update({k: int(lbl) for k, lbl in session.execute(
            select(ClassSubject.subject_key, ClassSubject.label)
            .where(ClassSubject.model_id == model_id, ClassSubject.subject_key.in_(keys[i : i + IN_CHUNK]))
        ).all()})
    return out


def is_class_subject(session: Session, key: str, model_id: int | None) -> bool:
    """Whether ``key`` is a class of the model (``model_id`` None: of any model)."""
    stmt = select(ClassSubject.id).where(ClassSubject.subject_key == key)
    if model_id is not None:
        stmt = stmt.where(ClassSubject.model_id == model_id)
    return session.execute(stmt.limit(1)).first() is not None


def summary(session: Session, model_ids: Sequence[int]) -> dict[int, tuple[int, list[int]]]:
    """Per model: how many labels are mapped, and the forgotten (tombstoned) labels."""
    if not model_ids:
        return {}
    mapped = dict(session.execute(
        select(ClassSubject.model_id, func.count()).where(ClassSubject.model_id.in_(list(model_ids))).group_by(ClassSubject.model_id)
    ).all())
    stones: dict[int, list[int]] = {}
    for mid, label in session.execute(
        select(ClassTombstone.model_id, ClassTombstone.label).where(ClassTombstone.model_id.in_(list(model_ids))).order_by(ClassTombstone.label)
    ).all():
        stones.setdefault(mid, []).append(int(label))
    return {mid: (int(mapped.get(mid, 0)), stones.get(mid, [])) for mid in model_ids}


def forgotten(session: Session, model_id: int, key: str) -> tuple[int, datetime, int | None] | None:
    """(label, deleted_at, version number) when ``key`` was the subject of a forgotten class."""
    row = session.execute(
        select(ClassTombstone.label, ClassTombstone.deleted_at, ClassTombstone.version_number)
        .where(ClassTombstone.model_id == model_id, ClassTombstone.subject_key == key)
    ).first()
    return None if row is None else (int(row[0]), row[1], row[2])


# ----------------------------------------------------------------------------- the mapping upload
def map_subjects(session: Session, secret: str, model: Model, pairs: Sequence[tuple[int, str]], actor: str) -> tuple[int, int, int]:
    """Store label -> subject pairs (subject keys only). Everything is checked before anything
    is written; returns (new pairs, pairs already stored, labels mapped now).

    * 409 :class:`SubjectsNotClasses`: the model was not registered with ``subjects_are_classes``;
    * 422 :class:`NoClassKind`: its method does not serve the ``class`` kind;
    * 422 :class:`UnknownClassLabel`: a label outside ``[0, num_classes)`` or without ``user``
      samples (never ingested, or already forgotten);
    * 409 :class:`ClassMappingConflict`: a label or a subject twice in the upload, or already
      mapped to another subject / label;
    * 409 :class:`ClassSubjectMismatch`: the label has samples of another subject, or the subject
      has samples of another label (a class subject *is* the class, nothing else).
    """
    if not model.subjects_are_classes:
        raise SubjectsNotClasses(f"model '{model.name}' was not registered with subjects_are_classes: true; "
                                 "its subjects own samples, not classes")
    if not serves_classes(model):
        raise NoClassKind(f"model '{model.name}' uses {model.method!r}, which forgets samples, not classes")
    keys = [subject_key(secret, sid) for _, sid in pairs]
    seen_labels: dict[int, int] = {}
    seen_keys: dict[str, int] = {}
    for row, (label, _), key in zip(range(len(pairs)), pairs, keys, strict=True):
        if not 0 <= label < model.num_classes:
            raise UnknownClassLabel(f"label {label} at row {row} is outside [0, {model.num_classes})", row=row, label=label)
        if label in seen_labels:
            raise ClassMappingConflict(f"label {label} appears twice (rows {seen_labels[label]} and {row})", row=row, label=label)
        if key in seen_keys:
            raise ClassMappingConflict(f"the subject at row {row} is already the subject of row {seen_keys[key]}: "
                                       "one subject is one class", row=row)
        seen_labels[label], seen_keys[key] = row, row
    current = mapping(session, model.id)
    by_key = {k: lbl for lbl, k in current.items()}
    new: list[tuple[int, str]] = []
    for row, ((label, _), key) in enumerate(zip(pairs, keys, strict=True)):
        if current.get(label) == key:
            continue
        if label in current:
            raise ClassMappingConflict(f"label {label} (row {row}) is already mapped to another subject", row=row, label=label)
        if key in by_key:
            raise ClassMappingConflict(f"the subject at row {row} is already mapped to label {by_key[key]}", row=row, label=label)
        new.append((label, key))
    labels = [lbl for lbl, _ in new]
    with_user = set(session.execute(select(Sample.label).distinct().where(
        Sample.model_id == model.id, Sample.split == Split.user.value, Sample.label.in_(labels or [-1]))).scalars())
    for label, key in new:
        row = seen_labels[label]
        if label not in with_user:
            raise UnknownClassLabel(f"label {label} at row {row} has no training (user) samples in model '{model.name}': "
                                    "ingest the class first (a forgotten class cannot be mapped again)", row=row, label=label)
        others = session.execute(select(func.count()).select_from(Sample).where(
            Sample.model_id == model.id, Sample.label == label, Sample.subject_key != key)).scalar_one()
        if others:
            raise ClassSubjectMismatch(f"label {label} at row {row} has {others} sample(s) of other subjects: a class subject "
                                       "owns every sample of its class", row=row, label=label)
        foreign = session.execute(select(func.count()).select_from(Sample).where(
            Sample.model_id == model.id, Sample.subject_key == key, Sample.label != label)).scalar_one()
        if foreign:
            raise ClassSubjectMismatch(f"the subject at row {row} holds {foreign} sample(s) of other labels than {label}",
                                       row=row, label=label)
    now = utcnow()
    session.add_all([ClassSubject(model_id=model.id, label=label, subject_key=key, created_at=now) for label, key in new])
    session.flush()
    if new:
        append_event(session, actor=actor, kind="class.subjects_mapped",
                     payload={"model": model.name, "labels": sorted(labels)})
    return len(new), len(pairs) - len(new), len(current) + len(new)


# ----------------------------------------------------------------------------- sample uploads
def guard_upload(session: Session, model: Model, keys: Sequence[str], labels: Sequence[int],
                 renewed: datetime | None) -> list[ClassTombstone]:
    """The class guards of a sample upload (each a 409, nothing written); returns the class
    tombstones the upload lifts (renewed consent), for :func:`lift`.

    * a label tombstoned for the model (the class was forgotten) is refused unless the upload's
      ``consent_renewed_at`` is later than the deletion and every row carrying it is the class's
      subject's (when the tombstone names one);
    * on a mapped class, a row of the label from another subject, or of the subject with
      another label (the mapping's invariant; see the module docstring)."""
    present = sorted(set(labels))
    # row-locked: two uploads renewing one class's consent at once would both lift the same
    # tombstone (a StaleDataError or a duplicate mapping row: a 500). The second waits here for the
    # first's commit, then finds the tombstone gone and the class mapped again: an ordinary upload.
    stones = list(session.execute(select(ClassTombstone).where(
        ClassTombstone.model_id == model.id, ClassTombstone.label.in_(present)).order_by(ClassTombstone.label)
        .with_for_update()).scalars()) if present else []
    for stone in stones:
        row = list(labels).index(stone.label)
        foreign = stone.subject_key is not None and any(lbl == stone.label and k != stone.subject_key for k, lbl in zip(keys, labels, strict=True))
        if renewed is None or renewed <= _aware(stone.deleted_at) or foreign:
            raise ClassTombstoned(
                f"class {stone.label} was forgotten by model '{model.name}'; samples carrying it need consent_renewed_at "
                "later than the deletion, for the class's subject only",
                row=row, label=stone.label, deleted_at=_aware(stone.deleted_at).isoformat(),
            )
    # publish deletes every remaining sample of the class (forget_classes): a row accepted now
    # would be deleted with no request and no receipt of its subject
    forgetting = _being_forgotten(session, model.id) if present else {}
    for label in present:
        if label in forgetting:
            raise ClassBeingForgotten(
                f"class {label} of model '{model.name}' is being forgotten by job {forgetting[label]}: upload its samples "
                "once the job has ended (a forgotten class then needs renewed consent)",
                row=list(labels).index(label), label=label, job_id=str(forgetting[label]),
            )
    if model.subjects_are_classes:
        current = mapping(session, model.id)
        by_key = {k: lbl for lbl, k in current.items()}
        for row, (key, label) in enumerate(zip(keys, labels, strict=True)):
            if (label in current and current[label] != key) or (key in by_key and by_key[key] != label):
                raise ClassSubjectMismatch(
                    f"row {row}: class {label if label in current else by_key[key]} of model '{model.name}' is a person; "
                    "its samples are its subject's only, and that subject's samples carry its label only", row=row)
    return stones


def _being_forgotten(session: Session, model_id: int) -> dict[int, uuid.UUID]:
    """label -> id of the model's active job that forgets that class (its config's ``classes``)."""
    out: dict[int, uuid.UUID] = {}
    for job_id, config in session.execute(select(Job.id, Job.config).where(
            Job.model_id == model_id, Job.status.in_([s.value for s in ACTIVE_JOB_STATUSES]))).all():
        for label in (config or {}).get("classes") or []:
            out.setdefault(int(label), job_id)
    return out


def lift(session: Session, model: Model, stones: Sequence[ClassTombstone], renewed: datetime, actor: str) -> None:
    """Renewed consent brings forgotten classes back: the tombstones go, and the class's subject
    is mapped again on a ``subjects_are_classes`` model (when neither side is mapped since)."""
    if not stones:
        return
    current = mapping(session, model.id)
    for stone in stones:
        if model.subjects_are_classes and stone.subject_key is not None and stone.label not in current \
                and stone.subject_key not in current.values():
            session.add(ClassSubject(model_id=model.id, label=stone.label, subject_key=stone.subject_key))
        append_event(session, actor=actor, kind="class.consent_renewed", subject_key=stone.subject_key,
                     payload={"model": model.name, "label": stone.label, "consent_renewed_at": renewed.isoformat()})
        session.delete(stone)
    session.flush()


# ----------------------------------------------------------------------------- publish
def forget_classes(session: Session, model: Model, keys: Iterable[str], extra: Mapping[int, Sequence[str]],
                   first_request: Mapping[str, uuid.UUID], version_number: int, now: datetime) -> dict[str, int]:
    """After a class job publishes (same transaction): the classes of the batch's class
    subjects (and ``extra``: label -> subject keys, the operator route's class) lose every
    remaining sample and their mapping rows, and are tombstoned. Returns subject key -> label.
    The chunk files are rewritten by the purge that follows."""
    by_key = labels_of(session, model.id, keys)
    for label, owners in extra.items():
        for key in owners:
            by_key.setdefault(key, label)
    labels: dict[int, list[str]] = {}
    for key, label in by_key.items():
        labels.setdefault(label, []).append(key)
    if not labels:
        return {}
    existing = set(session.execute(select(ClassTombstone.label).where(
        ClassTombstone.model_id == model.id, ClassTombstone.label.in_(list(labels)))).scalars())
    for label, owners in sorted(labels.items()):
        session.execute(delete(Sample).where(Sample.model_id == model.id, Sample.label == label))
        session.execute(delete(ClassSubject).where(ClassSubject.model_id == model.id, ClassSubject.label == label))
        if label not in existing:
            only = owners[0] if len(owners) == 1 else None
            session.add(ClassTombstone(model_id=model.id, label=label, subject_key=only, deleted_at=now,
                                       version_number=version_number, request_id=first_request.get(owners[0])))
    session.flush()
    return by_key
