"""``closing_requests`` (the publishing worker's batch close) writes exactly what closing the
requests one at a time wrote before it: the same request rows, the same webhook event rows in the
same order (also between other events the caller adds), and the same audit events appended in the
same order to a chain that verifies. The oracle is the old one-at-a-time code, kept here verbatim."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from service.audit import keys as audit_keys
from service.audit.service import GENESIS, _json_safe, _lock, canonical, verify_chain
from service.core.db import mark_erased
from service.deletion_request.service import close_request, closing_requests
from service.models import AuditEvent, DeletionRequest, Model, RequestStatus, WebhookEvent
from service.models._types import utcnow
from service.webhook import events

N = 7
REQUEUED = {1, 4}  # requests that stay open (a request for every model, still held elsewhere)


def _old_append_event(session, *, actor, kind, subject_key=None, payload=None):
    keys = audit_keys.current()
    _lock(session)
    last = session.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    seq = 1 if last is None else last.seq + 1
    prev = GENESIS if last is None else last.hash
    at = utcnow()
    clean = _json_safe(payload or {})
    key_id = keys.current_hmac_id
    session.add(AuditEvent(seq=seq, at=at, actor=actor, kind=kind, subject_key=subject_key, payload=clean, prev_hash=prev,
                           key_id=key_id, hash=keys.link(key_id, prev, canonical(seq, at, actor, kind, subject_key, clean, key_id))))
    session.flush()


def _old_close_request(session, row, status, *, actor, kind, payload, now):
    previous = row.status
    row.status = status.value
    row.updated_at = now
    if status is RequestStatus.completed:
        row.completed_at = now
    row.subject_id = None
    row.open_key = None
    mark_erased(session)
    session.flush()
    _old_append_event(session, actor=actor, kind=kind, subject_key=row.subject_key, payload=payload)
    events.request_changed(session, row, previous, now=now)


def _scenario(db, ids, model_id, close_one, batch):
    """Close the requests as the publish loop does, some requeued in between; what was written."""
    now = utcnow()
    rows = [db.get(DeletionRequest, i) for i in ids]
    first_event = db.scalar(select(WebhookEvent.id).order_by(WebhookEvent.id.desc()).limit(1)) or 0
    first_seq = db.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1)) or 0

    def loop(close):
        for i, r in enumerate(rows):
            r.samples_removed = (r.samples_removed or 0) + i
            r.clean_version_id = None
            if i in REQUEUED:
                r.status = RequestStatus.queued.value
                events.request_changed(db, r, RequestStatus.processing.value, now=now)
                continue
            close(r, {"request_id": str(r.id), "model": "m", "clean_version": 2, "samples_removed": r.samples_removed,
                      "held_versions": [{"model": "m", "number": 1}], "kl_nats": 1e-9})

    if batch:
        with closing_requests(db, RequestStatus.completed, actor="system:publish", kind="request.completed",
                              now=now) as close:
            loop(close)
    else:
        loop(lambda r, p: close_one(db, r, RequestStatus.completed, actor="system:publish", kind="request.completed",
                                    payload=p, now=now))
    db.flush()
    db.expire_all()
    requests = [
        (r.id, r.status, r.subject_id, r.open_key, r.samples_removed, r.clean_version_id, r.completed_at == now,
         r.updated_at == now if r.status == "completed" else None, r.subject_key)
        for r in (db.get(DeletionRequest, i) for i in ids)
    ]
    hooks = [(e.type, e.client_id, e.data, e.created_at == now)
             for e in db.scalars(select(WebhookEvent).where(WebhookEvent.id > first_event).order_by(WebhookEvent.id))]
    audit = [(e.seq, e.actor, e.kind, e.subject_key, e.payload, e.key_id)
             for e in db.scalars(select(AuditEvent).where(AuditEvent.seq > first_seq).order_by(AuditEvent.seq))]
    return requests, hooks, audit


@pytest.mark.parametrize("old", [_old_close_request, close_request], ids=["old-code", "close_request"])
def test_a_batch_close_writes_what_closing_one_at_a_time_wrote(db, old):
    m = Model(name="m", architecture="mlp", architecture_config={}, input_shape=[2], num_classes=2, linearize="all",
              method_config={})
    db.add(m)
    db.flush()
    t0 = utcnow()
    ids = [uuid.uuid4() for _ in range(N)]
    for i, rid in enumerate(ids):
        db.add(DeletionRequest(id=rid, subject_id=f"raw-{i}", subject_key=f"{i:064x}", model_id=m.id if i % 2 else None,
                               status="processing", open_key=f"open-{i}", created_at=t0, due_at=t0 + timedelta(days=30),
                               attempts=1))
    db.flush()
    _old_append_event(db, actor="test", kind="before")  # the chain has a head before the closes

    one = db.begin_nested()
    by_one = _scenario(db, ids, m.id, old, batch=False)
    assert verify_chain(db).ok
    one.rollback()
    db.expire_all()
    by_batch = _scenario(db, ids, m.id, None, batch=True)
    assert verify_chain(db).ok

    assert by_batch == by_one
    requests, hooks, audit = by_batch
    assert [r[1] for r in requests] == ["queued" if i in REQUEUED else "completed" for i in range(N)]
    assert all(r[2] is None and r[3] is None for i, r in enumerate(requests) if i not in REQUEUED)
    assert [h[2]["status"] for h in hooks] == ["queued" if i in REQUEUED else "completed" for i in range(N)]
    assert [a[3] for a in audit] == [f"{i:064x}" for i in range(N) if i not in REQUEUED]
    assert [a[0] for a in audit] == list(range(audit[0][0], audit[0][0] + N - len(REQUEUED)))
