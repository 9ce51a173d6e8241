"""The deletion receipt of a subject (DESIGN §1 auditor row, §3, §6.5 cumulative bound).

Per model that holds or held the subject:

* ``held_by_versions``: the versions trained on the subject's data. From the requests'
  ``held_versions`` (written at publish), plus, while samples of the subject remain, the live
  versions fitted on them: every live version when a sample is in the ``core`` split, otherwise
  those whose ``sample_watermark`` (highest user sample id fitted) is at least the subject's lowest
  user sample id.
* ``first_clean_version``: the first version published without the subject after its most recent
  deletion. A request's ``clean_version_id`` names it; a request for every model keeps only the
  last model's version there, so for the other models it is the first version published at or
  after the subject's tombstone (the tombstone and that version are written in one transaction).
* an alias is clean when its version is at or after the first clean version and not among the
  versions holding the subject (a subject that renewed consent and was re-ingested is held again).
* the cumulative bound: releases compose, so it is the sum of ``kl_nats`` over every version
  published since (and including) the first clean version, revoked ones included (they were
  served). A zeroed or retrained release contributes exactly 0; a release without a finite bound
  makes the sum unbounded (``math.inf``, which JSON renders as ``null``) and is named in
  ``unbounded_versions``.
* (ε, δ) releases (``certified_removal``, DESIGN §14.4) state no KL: each shows its ``epsilon_spent``
  and ``delta``, and the model's ``latest_epsilon_spent`` is the newest release's. β accumulates
  every removal since the last retrain and releases between retrains share the secret b, so the
  statement holds per release and is never summed. They are not counted as unbounded.

A subject never seen is a real answer: 200 with empty lists.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from service.core.security import subject_key
from service.job import repository as job_repo
from service.model_registry import classes
from service.model_registry.publication import held_versions
from service.model_registry.service import get_model
from service.models import DeletionRequest, Model, ModelAlias, ModelVersion, RequestStatus, Sample, Split, SubjectTombstone, VersionState
from service.subject.schemas import (
    CleanVersion,
    ForgottenClass,
    HeldVersion,
    ModelReceipt,
    ReleaseBound,
    SubjectReceipt,
    SubjectRequest,
)


def _kl(bound: dict[str, Any] | None) -> float | None:
    """A release's ``kl_nats`` as a finite float, or None when it has no finite bound."""
    value = (bound or {}).get("kl_nats")
    if isinstance(value, bool) or value is None:
        return None
    try:
        kl = float(value)
    except (TypeError, ValueError):
        return None
    return kl if math.isfinite(kl) and kl >= 0 else None


def _finite(bound: dict[str, Any] | None, key: str) -> float | None:
    value = (bound or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _held_entries(req: DeletionRequest, model_names: dict[int, str]) -> list[HeldVersion]:
    """``held_versions`` is a list of ``{"model", "number"}``; bare numbers belong to the request's model."""
    out = []
    for h in req.held_versions or []:
        if isinstance(h, dict) and isinstance(h.get("number"), int) and isinstance(h.get("model"), str):
            out.append(HeldVersion(model=h["model"], number=h["number"]))
        elif isinstance(h, int) and not isinstance(h, bool) and req.model_id in model_names:
            out.append(HeldVersion(model=model_names[req.model_id], number=h))
    return out


def receipt(session: Session, secret: str, subject_id: str, model_name: str | None = None) -> SubjectReceipt:
    key = subject_key(secret, subject_id)
    only = get_model(session, model_name) if model_name is not None else None  # unknown model: 404

    q = select(DeletionRequest).where(DeletionRequest.subject_key == key)
    if only is not None:
        q = q.where(or_(DeletionRequest.model_id == only.id, DeletionRequest.model_id.is_(None)))
    reqs = session.execute(q.order_by(DeletionRequest.created_at, DeletionRequest.id)).scalars().all()

    clean_ids = {r.clean_version_id for r in reqs if r.clean_version_id is not None}
    clean_by_id = {v.id: v for v in session.execute(select(ModelVersion).where(ModelVersion.id.in_(clean_ids))).scalars()} if clean_ids else {}

    # Every model that holds or held the subject, or that a request names.
    model_ids: set[int] = set(session.execute(select(Sample.model_id).where(Sample.subject_key == key).distinct()).scalars())
    tombstones = dict(session.execute(
        select(SubjectTombstone.model_id, SubjectTombstone.deleted_at).where(SubjectTombstone.subject_key == key)
    ).all())
    model_ids |= set(tombstones)
    model_ids |= {r.model_id for r in reqs if r.model_id is not None}
    model_ids |= {v.model_id for v in clean_by_id.values()}
    held_names = {h["model"] for r in reqs for h in (r.held_versions or []) if isinstance(h, dict) and isinstance(h.get("model"), str)}
    all_names = dict(session.execute(
        select(Model.id, Model.name).where(or_(Model.id.in_(model_ids or {-1}), Model.name.in_(held_names or {""})))
    ).all())
    names = {mid: n for mid, n in all_names.items() if only is None or mid == only.id}

    out_reqs = []
    for r in reqs:
        cv = clean_by_id.get(r.clean_version_id) if r.clean_version_id else None
        out_reqs.append(SubjectRequest(
            id=r.id, model=all_names.get(r.model_id) if r.model_id else None, status=r.status,
            created_at=r.created_at, due_at=r.due_at, completed_at=r.completed_at, samples_removed=r.samples_removed,
            clean_version=cv.number if cv else None, clean_version_model=all_names.get(cv.model_id) if cv else None,
            held_versions=_held_entries(r, all_names), kind=r.kind or "samples",
            forgotten_classes=[ForgottenClass(**c) for c in (r.forgotten_classes or [])
                               if isinstance(c, dict) and {"model", "label", "version"} <= set(c)],
        ))

    receipts = [
        _model_receipt(session, key, mid, name, reqs, out_reqs, clean_by_id, tombstones.get(mid))
        for mid, name in sorted(names.items(), key=lambda kv: kv[1])
    ]
    return SubjectReceipt(subject_id=subject_id, subject_key=key, requests=out_reqs, models=receipts)


def _model_receipt(
    session: Session,
    key: str,
    mid: int,
    name: str,
    reqs: Iterable[DeletionRequest],
    out_reqs: list[SubjectRequest],
    clean_by_id: dict[int, ModelVersion],
    tombstoned_since,
) -> ModelReceipt:
    remaining_by_split = dict(session.execute(
        select(Sample.split, func.count()).where(Sample.model_id == mid, Sample.subject_key == key).group_by(Sample.split)
    ).all())
    remaining = int(sum(remaining_by_split.values()))

    held: set[int] = {h.number for r in out_reqs for h in r.held_versions if h.model == name}
    if remaining_by_split.get(Split.core.value) or remaining_by_split.get(Split.user.value):
        holding = job_repo.subject_holdings(session, mid, [key])[key]
        live = session.execute(
            select(ModelVersion).where(ModelVersion.model_id == mid, ModelVersion.state == VersionState.live.value)
        ).scalars()
        held |= {v.number for v in held_versions(live, holding)}  # the rule publish revokes by

    # First clean version after the most recent deletion (see the module docstring).
    candidates = [v for v in (clean_by_id.get(r.clean_version_id) for r in reqs if r.clean_version_id) if v is not None and v.model_id == mid]
    if tombstoned_since is not None:
        after_stone = session.execute(
            select(ModelVersion).where(ModelVersion.model_id == mid, ModelVersion.created_at >= tombstoned_since)
            .order_by(ModelVersion.number).limit(1)
        ).scalar_one_or_none()
        if after_stone is not None:
            candidates.append(after_stone)
    clean = max(candidates, key=lambda v: v.number) if candidates else None

    aliases = dict(session.execute(
        select(ModelAlias.name, ModelVersion.number).join(ModelVersion, ModelVersion.id == ModelAlias.version_id)
        .where(ModelAlias.model_id == mid)
    ).all())

    def is_clean(alias: str) -> bool | None:
        n = aliases.get(alias)
        if n is None:
            return None
        return n not in held and (clean is None or n >= clean.number)

    releases: list[ReleaseBound] = []
    if clean is not None:
        for v in session.execute(
            select(ModelVersion).where(ModelVersion.model_id == mid, ModelVersion.number >= clean.number).order_by(ModelVersion.number)
        ).scalars():
            b = v.bound or {}
            releases.append(ReleaseBound(number=v.number, created_at=v.created_at, state=v.state,
                                         guarantee=b.get("guarantee") if isinstance(b.get("guarantee"), str) else None, kl_nats=_kl(b),
                                         epsilon_spent=_finite(b, "epsilon_spent"), delta=_finite(b, "delta")))
    unbounded = [r.number for r in releases if r.kl_nats is None and r.epsilon_spent is None]
    # No finite bound for one release: the sum is unbounded (inf here, null in JSON).
    total = math.inf if unbounded else math.fsum(r.kl_nats for r in releases if r.kl_nats is not None)
    latest = releases[-1] if releases and releases[-1].epsilon_spent is not None else None
    gone = classes.forgotten(session, mid, key)
    statement = None
    if gone is not None:
        label, _, number = gone
        statement = (f"The subject was class {label} of model '{name}'. Since version {number}, the model no longer knows "
                     f"class {label}: it was unlearned from the weights (gated on forget-class accuracy), every served version masks its logit, "
                     "its samples are deleted, and new samples carrying it are refused unless the subject renews consent.")
    return ModelReceipt(
        model=name,
        samples_remaining=remaining,
        tombstoned_since=tombstoned_since,
        forgotten_class=gone[0] if gone else None,
        class_statement=statement,
        held_by_versions=sorted(held),
        first_clean_version=CleanVersion(number=clean.number, created_at=clean.created_at, state=clean.state) if clean else None,
        latest_version=aliases.get("latest"),
        latest_is_clean=is_clean("latest"),
        production_version=aliases.get("production"),
        production_is_clean=is_clean("production"),
        cumulative_kl_nats=total,
        cumulative_kl_bits=total / math.log(2),
        releases_since_deletion=len(releases),
        releases=releases,
        unbounded_versions=unbounded,
        latest_epsilon_spent=latest.epsilon_spent if latest else None,
        latest_delta=latest.delta if latest else None,
        epsilon_statement="per release" if latest else None,
    )
