"""Deletion requests: intake, reads and operator transitions (DESIGN §3, §4, §5).

The HTTP router and the admin dashboard call these functions with a Session; they never
commit (the boundary does), they ``flush()``.

Ownership (DESIGN §10)
  * A request belongs to the *client* of the token that filed it (``client_id``). A requester
    reads and cancels only its client's requests: another client's request is ``404``, exactly
    like a request that does not exist. Other roles see every request; an auditor sees no raw
    subject id (``subject_id`` is null in what it reads).

Intake
  * One open request per (subject, model, client): ``open_key =
    "<subject_key>:<model_id or *>:<client_id or ->"`` is unique while the request is open
    (received/awaiting_approval/queued/processing) and NULL otherwise. A second request of the
    same client for the same pair is *merged*: the caller gets the open one. Two clients filing
    for one subject each get their own request; the forget job collects the subject once and
    completes both.
  * ``Idempotency-Key``: a replay with the same body returns the request the key created; the
    same key with a different body is a ``422`` problem. Keys are scoped per client (stored as
    ``"<client_id>:<key>"``), so two clients can never see each other's requests through one.
  * The insert runs in a SAVEPOINT; a unique violation (a concurrent or earlier request won)
    falls back to reading the winner, so races are settled by the database, never by Python.
  * No audit event on intake: the row itself (with ``created_at``) is the record, and the hot
    path must take thousands of requests a second. Every transition appends one.

Policy for ``model = null`` ("every model holding the subject")
  * status ``queued`` only if *every* registered model auto-approves (vacuously so when none
    is registered yet), else ``awaiting_approval``: a model whose owners want to approve
    erasures by hand is never bypassed by asking for "all models";
  * ``due_at`` uses the *smallest* ``sla_days`` among registered models (the strictest
    deadline it will have to meet), 30 days when none is registered;
  * a null-model request does not merge with a request for one named model (they differ in
    scope); it merges with another open null-model request for the same subject.

Closing
  completed/denied/cancelled are final: ``open_key`` and the raw ``subject_id`` are cleared
  (personal data is not kept after the request closes); ``subject_key`` stays. ``failed`` is
  not final (an operator may retry it) but it is not open either: its ``open_key`` is NULL
  (a new request for the subject may be filed) and a retry re-takes it, or is a ``409`` naming
  the request that holds it now.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from service.audit.service import append_event, append_events
from service.core.db import mark_erased
from service.core.errors import Conflict, IllegalTransition, ModelNotFound, NotFound, ProblemError
from service.core.pagination import decode_cursor, encode_cursor, split_page
from service.core.security import subject_key as make_subject_key
from service.deletion_request import repository as repo
from service.deletion_request.schemas import DeletionRequestCreate, DeletionRequestPage, DeletionRequestRead
from service.job import repository as job_repo
from service.model_registry.classes import is_class_subject
from service.models import OPEN_REQUEST_STATUSES, DeletionRequest, Model, RequestStatus
from service.models._types import utcnow
from service.webhook import events

DEFAULT_SLA_DAYS = 30
AUTO_APPROVER = "policy:auto_approve"
CURSOR_SCOPE = "deletion_requests"
FINAL_STATUSES = frozenset({RequestStatus.completed, RequestStatus.denied, RequestStatus.cancelled})
_SECONDS_PER_DAY = 86400.0


class DeletionRequestNotFound(NotFound):
    type, title = "deletion-request-not-found", "Unknown deletion request"


class IdempotencyKeyReused(ProblemError):
    status, type, title = 422, "idempotency-key-reused", "Idempotency-Key reused with a different body"


class LineStopped(Conflict):
    type, title = "line-stopped", "A failed job of the model awaits an operator's acknowledgement"


class ExtensionRefused(Conflict):
    type, title = "extension-refused", "The request's due date cannot be extended"


class ExtensionTooLong(ProblemError):
    status, type, title = 422, "extension-too-long", "The extension is longer than the configured maximum"


class OpenRequestExists(Conflict):
    type, title = "open-request-exists", "Another open request exists for this subject and model"


# ----------------------------------------------------------------------------- reading


def open_key_for(subject_key: str, model_id: int | None, client_id: int | None = None) -> str:
    return f"{subject_key}:{'*' if model_id is None else model_id}:{_client_part(client_id)}"


def _client_part(client_id: int | None) -> str:
    return "-" if client_id is None else str(client_id)


def scoped_idempotency_key(key: str | None, client_id: int | None) -> str | None:
    return None if key is None else f"{_client_part(client_id)}:{key}"


def _utc(at: datetime | None) -> datetime | None:
    """SQLite (embedded mode) hands back naive datetimes; every stored time is UTC."""
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def to_read(
    row: DeletionRequest, model_name: str | None, clean_version: int | None, now: datetime, *, redact: bool = False
) -> DeletionRequestRead:
    """``redact``: leave out the raw subject id (what an auditor reads)."""
    due_at = _utc(row.due_at)
    days_left = (due_at - now).total_seconds() / _SECONDS_PER_DAY
    return DeletionRequestRead(
        id=row.id,
        subject_id=None if redact else row.subject_id,
        subject_key=row.subject_key,
        model=model_name,
        client_id=row.client_id,
        status=RequestStatus(row.status),
        reason=row.reason,
        source=row.source,
        kind=row.kind or "samples",
        forgotten_classes=list(row.forgotten_classes or []),
        decision_reason=row.decision_reason,
        created_at=_utc(row.created_at),
        due_at=due_at,
        days_left=days_left,
        overdue=row.status not in FINAL_STATUSES and days_left < 0,
        approved_by=row.approved_by,
        approved_at=_utc(row.approved_at),
        job_id=row.job_id,
        clean_version=clean_version,
        samples_removed=row.samples_removed,
        error=row.error,
        attempts=row.attempts,
        completed_at=_utc(row.completed_at),
        extended_at=_utc(row.extended_at),
        extended_by=row.extended_by,
        extension_reason=row.extension_reason,
    )


def get(
    session: Session, request_id: uuid.UUID, *, owner: int | None = None, redact: bool = False
) -> DeletionRequestRead:
    """``owner``: only a request of this client is found (a requester's view); another
    client's request is the same ``404`` as a missing one."""
    found = repo.read_one(session, request_id)
    if found is None or (owner is not None and found[0].client_id != owner):
        raise DeletionRequestNotFound(f"No deletion request with id {request_id}")
    return to_read(*found, utcnow(), redact=redact)


def list_requests(
    session: Session,
    *,
    secret: str,
    statuses: list[RequestStatus] | None = None,
    model: str | None = None,
    subject_id: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
    owner: int | None = None,
    redact: bool = False,
) -> DeletionRequestPage:
    """Newest first, keyset-paginated. ``subject_id`` is matched through its subject key, so
    closed requests (whose raw id is gone) are found too. ``owner``: only this client's
    requests; ``redact``: no raw subject ids in the items."""
    position = decode_cursor(cursor, secret=secret, scope=CURSOR_SCOPE) if cursor is not None else None
    model_id = None
    if model is not None:
        model_id = repo.model_id_for_name(session, model)
        if model_id is None:
            raise ModelNotFound(f"No model named '{model}' is registered")
    rows = repo.read_page(
        session,
        statuses=[s.value for s in statuses] if statuses else None,
        model_id=model_id,
        subject_key=make_subject_key(secret, subject_id) if subject_id is not None else None,
        position=position,
        limit=limit,
        client_id=owner,
    )
    page, last = split_page(rows, limit, lambda r: (r[0].created_at, r[0].id))
    now = utcnow()
    return DeletionRequestPage(
        items=[to_read(*r, now, redact=redact) for r in page],
        next_cursor=encode_cursor(*last, secret=secret, scope=CURSOR_SCOPE) if last else None,
    )


# ----------------------------------------------------------------------------- intake


@dataclass(frozen=True)
class CreateResult:
    request: DeletionRequestRead
    outcome: str  # "created" | "replayed" | "merged"

    @property
    def created(self) -> bool:
        return self.outcome == "created"


def _policy(session: Session, model: str | None) -> tuple[int | None, str | None, bool, int]:
    """(model_id, model_name, auto_approve, sla_days) for a request naming ``model``."""
    if model is not None:
        policy = repo.model_policy(session, model)
        if policy is None:
            raise ModelNotFound(f"No model named '{model}' is registered", model=model)
        return policy.id, policy.name, policy.auto_approve, policy.sla_days
    policies = repo.all_model_policies(session)
    auto = all(p.auto_approve for p in policies)
    sla = min((p.sla_days for p in policies), default=DEFAULT_SLA_DAYS)
    return None, None, auto, sla


def _same_body(row: DeletionRequest, sk: str, model_id: int | None, data: DeletionRequestCreate) -> bool:
    return (
        row.subject_key == sk
        and row.model_id == model_id
        and row.reason == data.reason
        and row.source == data.source
    )


def create_request(
    session: Session,
    *,
    secret: str,
    data: DeletionRequestCreate,
    idempotency_key: str | None = None,
    autocommit_engine: Engine | None = None,
    client_id: int | None = None,
) -> CreateResult:
    """File a request, or return the one it replays or merges with. Raises
    :class:`ModelNotFound` and :class:`IdempotencyKeyReused`; writes nothing then.

    On PostgreSQL a new request is one ``INSERT … SELECT … ON CONFLICT DO NOTHING`` statement.
    With ``autocommit_engine`` (the hot HTTP path) that statement runs as a transaction of its
    own on a connection of that engine, committed when it returns; otherwise in ``session``'s
    transaction. Replays, merges and unknown models take the portable path in ``session``.
    ``client_id``: the owner; merges and idempotency keys are scoped to it."""
    sk = make_subject_key(secret, data.subject_id)
    idempotency_key = scoped_idempotency_key(idempotency_key, client_id)
    if autocommit_engine is not None or repo.supports_single_statement_insert(session):
        fast = _create_in_one_statement(session, sk, data, idempotency_key, autocommit_engine, client_id)
        if fast is not None:
            return fast
    # The portable path, and the slow path after a conflict or for an unknown model.
    model_id, model_name, auto, sla_days = _policy(session, data.model)
    open_key = open_key_for(sk, model_id, client_id)
    now = utcnow()
    status = RequestStatus.queued if auto else RequestStatus.awaiting_approval
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "subject_id": data.subject_id,
        "subject_key": sk,
        "model_id": model_id,
        "client_id": client_id,
        "idempotency_key": idempotency_key,
        "open_key": open_key,
        "status": status.value,
        "reason": data.reason,
        "source": data.source,
        "kind": "class" if is_class_subject(session, sk, model_id) else "samples",
        "created_at": now,
        "due_at": now + timedelta(days=sla_days),
        "approved_by": AUTO_APPROVER if auto else None,
        "approved_at": now if auto else None,
        "attempts": 0,
        "updated_at": now,
    }
    # A conflicting row may close between our failed insert and our read (then the insert
    # can succeed on the next try): a few rounds settle it.
    for _ in range(3):
        if repo.try_insert(session, values):
            row = DeletionRequest(**values)
            events.request_changed(session, row, None, now=now)
            return CreateResult(to_read(row, model_name, None, now), "created")
        if idempotency_key is not None:
            existing = repo.by_idempotency_key(session, idempotency_key)
            if existing is not None:
                if not _same_body(existing, sk, model_id, data):
                    raise IdempotencyKeyReused(
                        "This Idempotency-Key was already used with a different request body; "
                        "use a new key for a different request",
                        existing_request_id=str(existing.id),
                    )
                return CreateResult(_read_row(session, existing), "replayed")
        existing = repo.by_open_key(session, open_key)
        if existing is not None:
            return CreateResult(_read_row(session, existing), "merged")
    raise Conflict("The request conflicted with concurrent changes; retry it")  # pragma: no cover


def open_for_subject_keys(session: Session, model: Model, subject_keys: list[str], *, reason: str, source: str,
                          actor: str, kind: str = "samples") -> list[uuid.UUID]:
    """Requests an operator files by subject key (no raw id is known: the subjects who are a
    class of the model), approved by that operator and due now. Raises
    :class:`OpenRequestExists` (nothing written) when one of them already has an open request
    for the model."""
    now = utcnow()
    rows = []
    for sk in subject_keys:
        open_key = open_key_for(sk, model.id)
        existing = repo.by_open_key(session, open_key)
        if existing is not None:
            raise OpenRequestExists(f"a subject of this class already has an open deletion request for model '{model.name}'",
                                    existing_request_id=str(existing.id))
        rows.append(DeletionRequest(id=uuid.uuid4(), subject_id=None, subject_key=sk, model_id=model.id, open_key=open_key,
                                    status=RequestStatus.queued.value, reason=reason, source=source, kind=kind, created_at=now, due_at=now,
                                    approved_by=actor, approved_at=now, attempts=0, updated_at=now))
    session.add_all(rows)
    session.flush()
    for row in rows:
        append_event(session, actor=actor, kind="request.created", subject_key=row.subject_key,
                     payload={"request_id": str(row.id), "model": model.name, "source": source})
        events.request_changed(session, row, None, now=now)  # webhook subscribers learn of it like any request
    return [row.id for row in rows]


def mark_class_requests(requests: list[DeletionRequest], class_keys: set[str]) -> None:
    """The scheduler found these requests' subjects to be classes of the model it batches them
    for (the mapping may be newer than the request, or the request covers every model)."""
    for req in requests:
        if req.subject_key in class_keys:
            req.kind = "class"


def _create_in_one_statement(
    session: Session,
    sk: str,
    data: DeletionRequestCreate,
    idempotency_key: str | None,
    autocommit_engine: Engine | None,
    client_id: int | None,
) -> CreateResult | None:
    values = one_statement_values(sk, data, idempotency_key, client_id)
    if autocommit_engine is not None:
        got = repo.insert_with_policy_autocommit(autocommit_engine, values, **one_statement_policy(data))
    else:
        got = repo.insert_with_policy(session, values, **one_statement_policy(data))
    return None if got is None else one_statement_result(values, data, got)


def one_statement_values(
    sk: str, data: DeletionRequestCreate, idempotency_key: str | None, client_id: int | None
) -> dict[str, Any]:
    """The parameters of the one-statement insert (``repository.insert_with_policy``) of a
    request; ``idempotency_key`` already scoped to ``client_id``."""
    return {
        "id": uuid.uuid4(),
        "subject_id": data.subject_id,
        "subject_key": sk,
        "client_id": client_id,
        "open_suffix": ":" + _client_part(client_id),
        "idempotency_key": idempotency_key,
        "reason": data.reason,
        "source": data.source,
        "now": utcnow(),
    }


def one_statement_policy(data: DeletionRequestCreate) -> dict[str, Any]:
    return {"model": data.model, "auto_approver": AUTO_APPROVER, "default_sla_days": DEFAULT_SLA_DAYS}


def one_statement_result(values: dict[str, Any], data: DeletionRequestCreate, got: dict[str, Any]) -> CreateResult:
    """The created request, from the insert's parameters and what it returned (no ORM object:
    nothing is loaded, and the hot path pays for none)."""
    row = SimpleNamespace(
        id=values["id"],
        subject_id=data.subject_id,
        subject_key=values["subject_key"],
        client_id=values["client_id"],
        status=got["status"],
        reason=data.reason,
        source=data.source,
        decision_reason=None,
        kind=got["kind"],
        forgotten_classes=None,
        created_at=values["now"],
        due_at=got["due_at"],
        approved_by=got["approved_by"],
        approved_at=got["approved_at"],
        job_id=None,
        samples_removed=None,
        error=None,
        attempts=0,
        completed_at=None,
        extended_at=None,
        extended_by=None,
        extension_reason=None,
    )
    return CreateResult(to_read(row, data.model, None, values["now"]), "created")  # type: ignore[arg-type]


def _read_row(session: Session, row: DeletionRequest) -> DeletionRequestRead:
    found = repo.read_one(session, row.id)
    assert found is not None
    return to_read(*found, utcnow())


# ----------------------------------------------------------------------------- transitions

def close_request(
    session: Session,
    row: DeletionRequest,
    status: RequestStatus,
    *,
    actor: str,
    kind: str,
    payload: dict[str, Any],
    now: datetime | None = None,
) -> None:
    """The one way a request reaches a final status (completed, denied, cancelled), used by the
    API and the dashboard (:func:`transition`), the scheduler and the publishing worker: the
    status, the raw subject id and the open key cleared, the audit event appended."""
    with closing_requests(session, status, actor=actor, kind=kind, now=now) as close:
        close(row, payload)


@contextmanager
def closing_requests(
    session: Session,
    status: RequestStatus,
    *,
    actor: str,
    kind: str,
    now: datetime | None = None,
) -> Iterator[Callable[[DeletionRequest, dict[str, Any]], None]]:
    """:func:`close_request` for many requests in one go (the publishing worker's batch): each
    ``close(row, payload)`` changes the row and adds its webhook event at once (in the caller's
    order, between any other events the caller adds); on leaving, the rows are written in one
    flush and their audit events appended in the same order in one go. Rows, webhook events and
    audit events are those :func:`close_request` one at a time would have written."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"{status.value} is not a final status")
    now = now or utcnow()
    audit: list[dict[str, Any]] = []

    def close(row: DeletionRequest, payload: dict[str, Any]) -> None:
        previous = row.status
        row.status = status.value
        row.updated_at = now
        if status is RequestStatus.completed:
            row.completed_at = now
        row.subject_id = None
        row.open_key = None
        audit.append({"actor": actor, "kind": kind, "subject_key": row.subject_key, "payload": payload})
        events.request_changed(session, row, previous, now=now)

    yield close
    if audit:
        mark_erased(session)  # embedded SQLite: scrub the WAL of the raw id after this commits
        session.flush()
        append_events(session, audit)


# action -> (statuses it may start from, status it leads to, audit event kind)
TRANSITIONS: dict[str, tuple[frozenset[RequestStatus], RequestStatus, str]] = {
    "cancel": (
        frozenset({RequestStatus.received, RequestStatus.awaiting_approval, RequestStatus.queued}),
        RequestStatus.cancelled,
        "deletion_request.cancelled",
    ),
    "approve": (frozenset({RequestStatus.awaiting_approval}), RequestStatus.queued, "deletion_request.approved"),
    "deny": (frozenset({RequestStatus.awaiting_approval}), RequestStatus.denied, "deletion_request.denied"),
    "retry": (frozenset({RequestStatus.failed}), RequestStatus.queued, "deletion_request.retried"),
}


def transition(
    session: Session,
    request_id: uuid.UUID,
    action: str,
    *,
    actor: str,
    reason: str | None = None,
    owner: int | None = None,
    stop_the_line: bool = True,
) -> DeletionRequestRead:
    """Apply an operator/requester action under a row lock. An action not allowed from the
    current status raises :class:`IllegalTransition` naming ``current_status``. ``owner``:
    only a request of this client is found (another client's is ``404``; nothing is written).
    ``stop_the_line``: approving a request for a model with an unacknowledged failed job is a
    409 :class:`LineStopped` naming the job."""
    allowed_from, target, kind = TRANSITIONS[action]
    row = repo.lock(session, request_id)
    if row is None or (owner is not None and row.client_id != owner):
        raise DeletionRequestNotFound(f"No deletion request with id {request_id}")
    current = RequestStatus(row.status)
    if current not in allowed_from:
        raise IllegalTransition(
            f"Cannot {action} a request that is {current.value}; "
            f"{action} is allowed from: {', '.join(sorted(s.value for s in allowed_from))}",
            current_status=current.value,
            action=action,
        )
    if action == "approve" and stop_the_line and row.model_id is not None:
        failed = job_repo.unacknowledged_failure(session, row.model_id)
        if failed is not None:
            raise LineStopped(
                f"Job {failed.id} of this model failed and no operator acknowledged it; acknowledge it "
                f"(POST /v1/jobs/{failed.id}/acknowledge) before approving",
                job_id=str(failed.id), current_status=current.value,
            )
    now = utcnow()
    payload: dict[str, Any] = {"request_id": str(row.id), "from": current.value, "to": target.value, "model_id": row.model_id}
    if action == "approve":
        row.approved_by = actor
        row.approved_at = now
    elif action == "deny":
        row.decision_reason = reason
        payload["reason"] = reason
    elif action == "cancel" and reason is not None:
        row.decision_reason = reason
        payload["reason"] = reason
    elif action == "retry":
        payload["previous_error"] = row.error
        payload["previous_attempts"] = row.attempts
        # Re-take the open key first (a retry is the only way back into an open status): if a
        # newer open request for the pair holds it, that one supersedes this request.
        wanted = open_key_for(row.subject_key, row.model_id, row.client_id)
        if not repo.try_take_open_key(session, row.id, wanted):
            holder = repo.by_open_key(session, wanted)
            raise OpenRequestExists(
                f"Cannot retry: request {holder.id if holder else '?'} is open for the same subject "
                "and model and supersedes this one",
                open_request_id=str(holder.id) if holder else None,
                current_status=current.value,
            )
        row.error = None
        row.attempts = 0
    if target in FINAL_STATUSES:
        close_request(session, row, target, actor=actor, kind=kind, payload=payload, now=now)
        return _read_row(session, row)
    row.status = target.value
    row.updated_at = now
    if target in OPEN_REQUEST_STATUSES:
        row.open_key = open_key_for(row.subject_key, row.model_id, row.client_id)
    session.flush()
    append_event(session, actor=actor, kind=kind, subject_key=row.subject_key, payload=payload)
    events.request_changed(session, row, current.value, now=now)
    return _read_row(session, row)


def extend_due(
    session: Session, request_id: uuid.UUID, *, days: int, reason: str, actor: str, max_days: int,
) -> DeletionRequestRead:
    """The one SLA extension of a request (GDPR Art. 12(3)): before the due date passes, by at most
    ``max_days``, with a reason; audited and announced (``request.extended``). A second one, a
    closed request or a passed due date is a 409 :class:`ExtensionRefused`; too long a 422."""
    if days > max_days:
        raise ExtensionTooLong(f"An extension may add at most {max_days} days, not {days}", max_days=max_days)
    row = repo.lock(session, request_id)
    if row is None:
        raise DeletionRequestNotFound(f"No deletion request with id {request_id}")
    now = utcnow()
    if row.status in FINAL_STATUSES:
        raise ExtensionRefused(f"The request is {row.status}; only an unfinished request can be extended",
                               current_status=row.status)
    if row.extended_at is not None:
        raise ExtensionRefused(f"The due date was already extended on {_utc(row.extended_at):%Y-%m-%d} by "
                               f"{row.extended_by}; a request is extended once", current_status=row.status)
    previous = _utc(row.due_at)
    if previous <= now:
        raise ExtensionRefused(f"The due date {previous:%Y-%m-%d %H:%M} UTC has passed; an extension must come before it",
                               current_status=row.status)
    row.due_at = previous + timedelta(days=days)
    row.extended_at, row.extended_by, row.extension_reason = now, actor, reason
    row.updated_at = now
    session.flush()
    append_event(session, actor=actor, kind="deletion_request.extended", subject_key=row.subject_key,
                 payload={"request_id": str(row.id), "from": previous.isoformat(), "to": row.due_at.isoformat(),
                          "days": days, "reason": reason})
    events.emit(session, events.REQUEST_EXTENDED,
                {"request_id": str(row.id), "subject_key": row.subject_key, "status": row.status, "days": days,
                 "previous_due_at": previous.isoformat(), "due_at": row.due_at.isoformat(), "reason": reason},
                client_id=row.client_id, now=now)
    return _read_row(session, row)


TABLE = DeletionRequest.__tablename__


def last_erased_at(session: Session) -> datetime | None:
    """When a request last had its raw subject id cleared (the sweeper vacuums after it)."""
    return repo.last_erased_at(session)
