"""The audit log: append-only events in a hash chain.

``hash = sha256(prev_hash || canonical JSON of the event)``, where the canonical JSON holds
seq, at (UTC, microseconds), actor, kind, subject_key and payload with sorted keys and no
spaces. Appends are serialised (a transaction-scoped advisory lock on PostgreSQL; SQLite
transactions are already serial), so the chain has no forks.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from service.models import AuditEvent
from service.models._types import utcnow

GENESIS = "0" * 64
_LOCK_ID = 0x1E7E_A0D1  # advisory lock key for audit appends


def _canonical_time(at: datetime) -> str:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _json_safe(value: Any) -> Any:
    """The payload as it will read back from the database, so the hash computed at append time
    is the hash recomputed at verification.

    * Non-finite floats become strings ("inf", "nan"): strict JSON has no such numbers.
    * PostgreSQL JSONB keeps numbers as ``numeric``: ``1e+20`` reads back as the integer
      100000000000000000000 and ``-0.0`` as ``0.0``. Integral floats of magnitude >= 1e16 (the
      ones Python writes with an exponent) become ints, and ``-0.0`` becomes ``0.0``; every other
      float round-trips exactly through its shortest repr.
    * JSONB refuses NUL characters: they become U+FFFD.
    * Tuples become lists, keys become strings; UUIDs, datetimes, enums and other objects become
      their string form (datetimes in ISO 8601).
    """
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0.0:
            return 0.0
        if abs(value) >= 1e16 and value.is_integer():
            return int(value)
        return float(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str(value).replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_json_safe(str(k) if not isinstance(k, str) else k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Enum):
        return _json_safe(value.value)
    if isinstance(value, datetime):
        return _canonical_time(value)
    if callable(getattr(value, "item", None)) and getattr(value, "shape", None) == ():
        return _json_safe(value.item())  # numpy scalars
    return _json_safe(str(value))


def canonical(seq: int, at: datetime, actor: str, kind: str, subject_key: str | None, payload: dict) -> bytes:
    doc = {
        "seq": seq,
        "at": _canonical_time(at),
        "actor": actor,
        "kind": kind,
        "subject_key": subject_key,
        "payload": payload,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def chain_hash(prev_hash: str, body: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + body).hexdigest()


def append_event(
    session: Session,
    *,
    actor: str,
    kind: str,
    subject_key: str | None = None,
    payload: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain inside the caller's transaction. Never pass raw subject ids."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_ID})
    last = session.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    seq = 1 if last is None else last.seq + 1
    prev = GENESIS if last is None else last.hash
    at = utcnow()
    clean = _json_safe(payload or {})
    event = AuditEvent(
        seq=seq,
        at=at,
        actor=actor,
        kind=kind,
        subject_key=subject_key,
        payload=clean,
        prev_hash=prev,
        hash=chain_hash(prev, canonical(seq, at, actor, kind, subject_key, clean)),
    )
    session.add(event)
    session.flush()
    return event


@dataclass
class ChainVerification:
    ok: bool
    events: int
    first_broken_seq: int | None = None
    reason: str | None = None
    head_hash: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "first_broken_seq": self.first_broken_seq,
            "reason": self.reason,
            "head_hash": self.head_hash,
        }


def verify_chain(session: Session, batch: int = 5000) -> ChainVerification:
    """Recompute every link in seq order; name the first broken one."""
    prev = GENESIS
    expected_seq = 1
    count = 0
    last_seq = 0
    while True:
        rows = session.execute(
            select(AuditEvent).where(AuditEvent.seq > last_seq).order_by(AuditEvent.seq).limit(batch)
        ).scalars().all()
        if not rows:
            break
        for ev in rows:
            count += 1
            if ev.seq != expected_seq:
                return ChainVerification(False, count, ev.seq, f"missing event(s) before seq {ev.seq}")
            if ev.prev_hash != prev:
                return ChainVerification(False, count, ev.seq, "prev_hash does not match the previous event's hash")
            h = chain_hash(prev, canonical(ev.seq, ev.at, ev.actor, ev.kind, ev.subject_key, ev.payload))
            if h != ev.hash:
                return ChainVerification(False, count, ev.seq, "hash does not match the event's content")
            prev = ev.hash
            expected_seq += 1
            last_seq = ev.seq
    return ChainVerification(True, count, None, None, prev if count else GENESIS)
