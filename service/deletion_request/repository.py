"""Queries on ``deletion_requests``. No commits here: the boundary owns the transaction."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from service.core.pagination import CursorPosition, keyset_page
from service.models import DeletionRequest, Model, ModelVersion

if TYPE_CHECKING:
    from psycopg import AsyncConnection


@dataclass(frozen=True)
class ModelPolicy:
    id: int
    name: str
    auto_approve: bool
    sla_days: int


def model_policy(session: Session, name: str) -> ModelPolicy | None:
    row = session.execute(
        select(Model.id, Model.name, Model.auto_approve, Model.sla_days).where(Model.name == name)
    ).first()
    return None if row is None else ModelPolicy(row.id, row.name, bool(row.auto_approve), int(row.sla_days))


def all_model_policies(session: Session) -> list[ModelPolicy]:
    rows = session.execute(select(Model.id, Model.name, Model.auto_approve, Model.sla_days)).all()
    return [ModelPolicy(r.id, r.name, bool(r.auto_approve), int(r.sla_days)) for r in rows]


def model_id_for_name(session: Session, name: str) -> int | None:
    return session.execute(select(Model.id).where(Model.name == name)).scalar()


def try_insert(session: Session, values: dict[str, Any]) -> bool:
    """Insert one request inside a SAVEPOINT. ``False`` when a unique key (idempotency key or
    open key) is already taken by a committed row: the caller then reads the winner. Concurrent
    inserts of the same key wait on the database's unique index, so there is never a duplicate."""
    try:
        with session.begin_nested():
            session.execute(insert(DeletionRequest), [values])
    except IntegrityError:
        return False
    return True


# One round trip for the hot path on PostgreSQL: the model's policy is read, the row inserted
# and a unique conflict (idempotency key, open key) detected in a single statement. ON CONFLICT
# DO NOTHING waits for a concurrent insert of the same key to commit or abort, exactly as a
# plain INSERT in a SAVEPOINT would, so the database still settles every race. The same
# statement writes the request's webhook event (the outbox row), so intake stays one round trip
# with one extra row. The request's kind (``class`` when the subject is a class of the model, or
# of any model for a request covering every model) is an indexed EXISTS in the same statement.
_FAST_INSERT = """
WITH ins AS (
INSERT INTO deletion_requests (id, subject_id, subject_key, model_id, client_id, idempotency_key, open_key, status,
    reason, source, kind, created_at, due_at, approved_by, approved_at, attempts, updated_at)
SELECT CAST(:id AS uuid), CAST(:subject_id AS text), CAST(:subject_key AS text), p.id, CAST(:client_id AS integer),
    CAST(:idempotency_key AS text),
    CAST(:subject_key AS text) || ':' || coalesce(p.id::text, '*') || CAST(:open_suffix AS text),
    CASE WHEN p.auto_approve THEN 'queued' ELSE 'awaiting_approval' END,
    CAST(:reason AS text), CAST(:source AS text),
    CASE WHEN EXISTS (SELECT 1 FROM class_subjects c WHERE c.subject_key = CAST(:subject_key AS text)
        AND (p.id IS NULL OR c.model_id = p.id)) THEN 'class' ELSE 'samples' END,
    CAST(:now AS timestamptz),
    CAST(:now AS timestamptz) + make_interval(days => p.sla_days),
    CASE WHEN p.auto_approve THEN CAST(:auto_approver AS text) END,
    CASE WHEN p.auto_approve THEN CAST(:now AS timestamptz) END, 0, CAST(:now AS timestamptz)
FROM {policy} AS p
ON CONFLICT DO NOTHING
RETURNING id, subject_key, client_id, model_id, open_key, status, kind, due_at, approved_by, approved_at
), event AS (
INSERT INTO webhook_events (type, client_id, data, created_at)
SELECT 'request.status_changed', client_id, jsonb_build_object('request_id', id::text, 'subject_key', subject_key,
    'model', {event_model}, 'status', status, 'previous_status', NULL,
    'due_at', to_char(due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')), CAST(:now AS timestamptz)
FROM ins
)
SELECT model_id, open_key, status, kind, due_at, approved_by, approved_at FROM ins
"""
_ONE_MODEL = "(SELECT id, auto_approve, sla_days FROM models WHERE name = :model)"
_ALL_MODELS = (
    "(SELECT NULL::integer AS id, coalesce(bool_and(auto_approve), true) AS auto_approve, "
    "coalesce(min(sla_days), CAST(:default_sla_days AS integer)) AS sla_days FROM models)"
)
_FAST_ONE = text(_FAST_INSERT.format(policy=_ONE_MODEL, event_model="CAST(:model AS text)"))
_FAST_ALL = text(_FAST_INSERT.format(policy=_ALL_MODELS, event_model="NULL"))


def supports_single_statement_insert(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _policy_statement(
    values: dict[str, Any], model: str | None, auto_approver: str, default_sla_days: int
) -> tuple[bool, dict[str, Any]]:
    """(over every model?, parameters) of the one-statement insert."""
    params = values | {"auto_approver": auto_approver}
    if model is None:
        return True, params | {"default_sla_days": default_sla_days}
    return False, params | {"model": model}


def insert_with_policy(
    session: Session, values: dict[str, Any], *, model: str | None, auto_approver: str, default_sla_days: int
) -> dict[str, Any] | None:
    """PostgreSQL only. Insert a request whose status, due date and approval come from the
    model's policy (``model`` None: the policy over every model, see the service docstring).
    ``None`` when nothing was inserted: the model is unknown or a unique key is taken."""
    every, params = _policy_statement(values, model, auto_approver, default_sla_days)
    row = session.connection().execute(_FAST_ALL if every else _FAST_ONE, params).mappings().first()
    return None if row is None else dict(row)


def insert_with_policy_autocommit(
    engine: Engine, values: dict[str, Any], *, model: str | None, auto_approver: str, default_sla_days: int
) -> dict[str, Any] | None:
    """:func:`insert_with_policy` as a transaction of its own (PostgreSQL autocommit): one
    round trip, durable when it returns (the server's synchronous_commit applies)."""
    every, params = _policy_statement(values, model, auto_approver, default_sla_days)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = conn.execute(_FAST_ALL if every else _FAST_ONE, params).mappings().first()
        return None if row is None else dict(row)


@functools.cache
def _driver_sql(every: bool) -> str:
    """The one-statement insert as psycopg's SQL (``%(name)s`` parameters), compiled once."""
    from sqlalchemy.dialects.postgresql import psycopg

    return str((_FAST_ALL if every else _FAST_ONE).compile(dialect=psycopg.dialect()))


async def insert_with_policy_on(
    conn: AsyncConnection, values: dict[str, Any], *, model: str | None, auto_approver: str, default_sla_days: int
) -> dict[str, Any] | None:
    """:func:`insert_with_policy_autocommit` on an autocommit psycopg connection of the event
    loop (no SQLAlchemy, a server-side prepared statement): the same statement, the same result,
    durable when it returns."""
    every, params = _policy_statement(values, model, auto_approver, default_sla_days)
    cur = await conn.execute(_driver_sql(every), params, prepare=True)
    row = await cur.fetchone()
    return None if row is None else dict(zip([c.name for c in cur.description], row, strict=True))


def try_take_open_key(session: Session, request_id: uuid.UUID, open_key: str) -> bool:
    """Set ``open_key`` on a request inside a SAVEPOINT; ``False`` if another request holds it."""
    try:
        with session.begin_nested():
            session.execute(update(DeletionRequest).where(DeletionRequest.id == request_id).values(open_key=open_key))
    except IntegrityError:
        return False
    return True


def by_idempotency_key(session: Session, key: str) -> DeletionRequest | None:
    return session.execute(select(DeletionRequest).where(DeletionRequest.idempotency_key == key)).scalar()


def by_open_key(session: Session, open_key: str) -> DeletionRequest | None:
    return session.execute(select(DeletionRequest).where(DeletionRequest.open_key == open_key)).scalar()


def lock(session: Session, request_id: uuid.UUID) -> DeletionRequest | None:
    """``SELECT … FOR UPDATE``: concurrent transitions of one request run one after the other."""
    return session.execute(
        select(DeletionRequest).where(DeletionRequest.id == request_id).with_for_update()
        .execution_options(populate_existing=True)
    ).scalar()


def _read_query() -> Select[Any]:
    return (
        select(DeletionRequest, Model.name, ModelVersion.number)
        .outerjoin(Model, Model.id == DeletionRequest.model_id)
        .outerjoin(ModelVersion, ModelVersion.id == DeletionRequest.clean_version_id)
    )


def read_one(session: Session, request_id: uuid.UUID) -> tuple[DeletionRequest, str | None, int | None] | None:
    row = session.execute(_read_query().where(DeletionRequest.id == request_id)).first()
    return None if row is None else (row[0], row[1], row[2])


def read_page(
    session: Session,
    *,
    statuses: Iterable[str] | None,
    model_id: int | None,
    subject_key: str | None,
    position: CursorPosition | None,
    limit: int,
    client_id: int | None = None,
) -> list[tuple[DeletionRequest, str | None, int | None]]:
    stmt = _read_query()
    if client_id is not None:
        stmt = stmt.where(DeletionRequest.client_id == client_id)
    if statuses:
        stmt = stmt.where(DeletionRequest.status.in_(list(statuses)))
    if model_id is not None:
        stmt = stmt.where(DeletionRequest.model_id == model_id)
    if subject_key is not None:
        stmt = stmt.where(DeletionRequest.subject_key == subject_key)
    stmt = keyset_page(
        stmt, DeletionRequest.created_at, DeletionRequest.id, position, limit, id_convert=lambda v: uuid.UUID(str(v))
    )
    return [(r[0], r[1], r[2]) for r in session.execute(stmt).all()]


def last_erased_at(session: Session):
    return session.execute(
        select(func.max(DeletionRequest.updated_at)).where(DeletionRequest.subject_id.is_(None))
    ).scalar()
