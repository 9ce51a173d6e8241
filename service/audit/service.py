"""The audit log: append-only events in a keyed hash chain, and signed checkpoints (DESIGN §7, §10).

``hash = HMAC-SHA256(key[key_id], prev_hash || canonical JSON of the event)``, where the
canonical JSON holds seq, at (UTC, microseconds), actor, kind, subject_key, payload and key_id
with sorted keys and no spaces. The HMAC key lives in settings only, so whoever can write the
database but does not hold the key cannot rewrite the chain consistently. Appends are
serialised (a transaction-scoped advisory lock on PostgreSQL; SQLite transactions are already
serial), so the chain has no forks.

A *checkpoint* is an Ed25519 signature over ``(seq, head hash, time, key id)``, made at every
publish and by a periodic tick. Holding a checkpoint, anyone with the public key can tell
whether an export of the chain was truncated or rewritten up to that point
(:func:`verify_export`); the server, holding the HMAC key, also detects edited content
(:func:`verify_chain`).

Events of the old, unkeyed chain (``key_id`` NULL, ``hash = sha256(prev || body)``) are re-linked
once with the HMAC key by :func:`rekey_legacy_chain` at the API's first start.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from service.audit import keys as audit_keys
from service.audit.keys import AuditKeys, canonical_time
from service.models import AuditCheckpoint, AuditEvent
from service.models._types import utcnow

GENESIS = "0" * 64
_LOCK_ID = 0x1E7E_A0D1  # advisory lock key for audit appends


_canonical_time = canonical_time


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


def canonical(
    seq: int, at: datetime, actor: str, kind: str, subject_key: str | None, payload: dict, key_id: str | None = None
) -> bytes:
    """The bytes an event's link covers. ``key_id`` None: the old unkeyed chain's form."""
    doc = {
        "seq": seq,
        "at": _canonical_time(at) if isinstance(at, datetime) else str(at),
        "actor": actor,
        "kind": kind,
        "subject_key": subject_key,
        "payload": payload,
    }
    if key_id is not None:
        doc["key_id"] = key_id
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def legacy_hash(prev_hash: str, body: bytes) -> str:
    """The old unkeyed link, sha256(prev || body): only for reading a chain not yet re-linked."""
    return hashlib.sha256(prev_hash.encode() + body).hexdigest()


chain_hash = legacy_hash  # the old name


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_ID})


def append_event(
    session: Session,
    *,
    actor: str,
    kind: str,
    subject_key: str | None = None,
    payload: dict[str, Any] | None = None,
    keys: AuditKeys | None = None,
) -> AuditEvent:
    """Append one event to the chain inside the caller's transaction. Never pass raw subject ids."""
    return append_events(session, [{"actor": actor, "kind": kind, "subject_key": subject_key, "payload": payload}],
                         keys=keys)[0]


def append_events(session: Session, items: list[dict[str, Any]], *, keys: AuditKeys | None = None) -> list[AuditEvent]:
    """Append events (each a dict of ``actor``, ``kind``, optional ``subject_key`` and
    ``payload``) to the chain in the given order, inside the caller's transaction: one lock, one
    read of the head and one flush for all of them. Each event is what :func:`append_event` would
    have appended in its turn. Never pass raw subject ids."""
    if not items:
        return []
    keys = keys or audit_keys.current()
    _lock(session)
    last = session.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    seq = 0 if last is None else last.seq
    prev = GENESIS if last is None else last.hash
    key_id = keys.current_hmac_id
    appended = []
    for item in items:
        seq += 1
        at = utcnow()
        actor, kind, subject_key = item["actor"], item["kind"], item.get("subject_key")
        clean = _json_safe(item.get("payload") or {})
        event = AuditEvent(
            seq=seq,
            at=at,
            actor=actor,
            kind=kind,
            subject_key=subject_key,
            payload=clean,
            prev_hash=prev,
            key_id=key_id,
            hash=keys.link(key_id, prev, canonical(seq, at, actor, kind, subject_key, clean, key_id)),
        )
        prev = event.hash
        appended.append(event)
    session.add_all(appended)
    session.flush()
    return appended


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_dict(cp: AuditCheckpoint) -> dict[str, Any]:
    """The public form of a checkpoint: what is signed, the signature and the algorithm."""
    return {
        "seq": int(cp.seq),
        "head": cp.head_hash,
        "at": _canonical_time(cp.at),
        "key_id": cp.key_id,
        "signature": cp.signature,
        "algorithm": audit_keys.ALGORITHM,
    }


def sign_checkpoint(session: Session, *, keys: AuditKeys | None = None, only_if_new: bool = False) -> AuditCheckpoint | None:
    """Sign the chain's current head inside the caller's transaction (so a publish and its
    checkpoint commit together). ``only_if_new``: skip when the latest checkpoint already covers
    the head (the periodic tick). ``None`` when the chain is empty or nothing was signed."""
    keys = keys or audit_keys.current()
    _lock(session)
    last = session.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    if last is None:
        return None
    if only_if_new:
        latest = latest_checkpoint(session)
        if latest is not None and latest.seq == last.seq and latest.key_id == keys.signing_key_id:
            return None
    at = utcnow()
    key_id, signature = keys.sign(int(last.seq), last.hash, _canonical_time(at))
    cp = AuditCheckpoint(seq=int(last.seq), head_hash=last.hash, at=at, key_id=key_id, signature=signature)
    session.add(cp)
    session.flush()
    from service.model_registry.manifest_cache import changed  # manifests carry the latest checkpoint

    changed(session)
    return cp


def sign_after_key_rotation(session: Session, *, keys: AuditKeys | None = None) -> AuditCheckpoint | None:
    """After the signing key changed, sign the head with the new key at once (the API's start),
    so verification, which checks the latest checkpoint with the current public key, holds.
    A no-op (one query) otherwise."""
    keys = keys or audit_keys.current()
    latest = latest_checkpoint(session)
    if latest is None or latest.key_id == keys.signing_key_id:
        return None
    return sign_checkpoint(session, keys=keys)


def latest_checkpoint(session: Session) -> AuditCheckpoint | None:
    return session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.id.desc()).limit(1)).scalar()


# ----------------------------------------------------------------------------- verification


@dataclass
class ChainVerification:
    ok: bool
    events: int
    first_broken_seq: int | None = None
    reason: str | None = None
    head_hash: str | None = None
    checkpoint_seq: int | None = None
    events_after_checkpoint: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "first_broken_seq": self.first_broken_seq,
            "reason": self.reason,
            "head_hash": self.head_hash,
            "checkpoint_seq": self.checkpoint_seq,
            "events_after_checkpoint": self.events_after_checkpoint,
        }


def _link_problem(ev: Any, prev: str, expected_seq: int, keys: AuditKeys | None) -> str | None:
    """Why the event ``ev`` (attributes or dict-like access through ``getattr``) does not follow
    ``prev`` at ``expected_seq``; ``None`` when it does. ``keys`` None: content is not checked."""
    if ev.seq != expected_seq:
        if ev.seq > expected_seq:
            return f"missing event(s) before seq {ev.seq}"
        return f"event seq {ev.seq} is out of order (expected seq {expected_seq})"
    if ev.prev_hash != prev:
        return "prev_hash does not match the previous event's hash"
    if keys is None:
        return None
    if ev.key_id is None:
        return "event is not keyed (the legacy chain has not been re-linked)"
    if ev.key_id not in keys.hmac_keys:
        return f"event is linked with an unknown HMAC key id {ev.key_id}"
    h = keys.link(ev.key_id, prev, canonical(ev.seq, ev.at, ev.actor, ev.kind, ev.subject_key, ev.payload, ev.key_id))
    if h != ev.hash:
        return "hash does not match the event's content"
    return None


def verify_chain(session: Session, batch: int = 5000, *, keys: AuditKeys | None = None) -> ChainVerification:
    """Recompute every link in seq order with the HMAC keys and name the first broken one; then
    check the chain against the checkpoints: every checkpoint's head must be the hash of the event
    at its seq, the latest must carry a valid signature, and the chain must reach it (no
    truncation). Events after the latest checkpoint are protected by the HMAC only."""
    keys = keys or audit_keys.current()
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
            problem = _link_problem(ev, prev, expected_seq, keys)
            if problem is not None:
                return ChainVerification(False, count, ev.seq, problem)
            prev = ev.hash
            expected_seq += 1
            last_seq = ev.seq
    latest = latest_checkpoint(session)
    if latest is None:
        return ChainVerification(True, count, None, None, prev if count else GENESIS, None, count)
    problem = audit_keys.checkpoint_problem(checkpoint_dict(latest), keys.public_key)
    if problem is not None:
        return ChainVerification(False, count, None, f"latest checkpoint (seq {latest.seq}): {problem}")
    if last_seq < latest.seq:
        return ChainVerification(
            False, count, last_seq + 1,
            f"chain truncated: it ends at seq {last_seq} but checkpoint {latest.id} covers seq {latest.seq}",
        )
    mismatch = session.execute(
        select(AuditCheckpoint.id, AuditCheckpoint.seq)
        .outerjoin(AuditEvent, AuditEvent.seq == AuditCheckpoint.seq)
        .where((AuditEvent.hash.is_(None)) | (AuditEvent.hash != AuditCheckpoint.head_hash))
        .order_by(AuditCheckpoint.seq)
        .limit(1)
    ).first()
    if mismatch is not None:
        return ChainVerification(
            False, count, int(mismatch.seq),
            f"event seq {mismatch.seq} differs from the head signed by checkpoint {mismatch.id} (chain rewritten)",
        )
    return ChainVerification(True, count, None, None, prev if count else GENESIS, int(latest.seq), last_seq - int(latest.seq))


# ----------------------------------------------------------------------------- the old chain


def rekey_legacy_chain(session: Session, *, keys: AuditKeys | None = None, actor: str = "system:audit-rekey") -> int:
    """Re-link the whole chain with the HMAC key when it still holds events of the old unkeyed
    chain (``key_id`` NULL); a no-op otherwise. Runs once, at the API's first start after the
    upgrade (and from ``lethe db upgrade``). Before re-linking, the old chain is checked with its
    own (sha256) rule, and the result is recorded in an ``audit.chain_rekeyed`` event together
    with the old head, then a checkpoint is signed. Returns the number of events re-linked."""
    keys = keys or audit_keys.current()
    if session.execute(select(AuditEvent.seq).where(AuditEvent.key_id.is_(None)).limit(1)).first() is None:
        return 0
    _lock(session)
    rows = session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars().all()
    if not any(ev.key_id is None for ev in rows):
        return 0  # another process did it while we waited for the lock
    legacy_ok, legacy_broken, legacy_reason = True, None, None
    prev, expected = GENESIS, 1
    for ev in rows:
        if ev.key_id is None:
            problem = _link_problem(ev, prev, expected, None)
            if problem is None and legacy_hash(prev, canonical(ev.seq, ev.at, ev.actor, ev.kind, ev.subject_key, ev.payload)) != ev.hash:
                problem = "hash does not match the event's content"
        else:
            problem = _link_problem(ev, prev, expected, keys)
        if problem is not None and legacy_ok:
            legacy_ok, legacy_broken, legacy_reason = False, ev.seq, problem
        prev, expected = ev.hash, ev.seq + 1
    old_head = prev
    key_id = keys.current_hmac_id
    prev = GENESIS
    for ev in rows:
        ev.key_id = key_id
        ev.prev_hash = prev
        ev.hash = keys.link(key_id, prev, canonical(ev.seq, ev.at, ev.actor, ev.kind, ev.subject_key, ev.payload, key_id))
        prev = ev.hash
    session.flush()
    append_event(
        session,
        actor=actor,
        kind="audit.chain_rekeyed",
        payload={"events_relinked": len(rows), "key_id": key_id, "old_head": old_head,
                 "old_chain_ok": legacy_ok, "old_first_broken_seq": legacy_broken, "old_reason": legacy_reason},
        keys=keys,
    )
    sign_checkpoint(session, keys=keys)
    return len(rows)


# ----------------------------------------------------------------------------- export


def export_lines(session: Session, batch: int = 5000) -> Iterator[dict[str, Any]]:
    """Every event in seq order, then every checkpoint, as JSON-ready dicts (one JSONL line each)."""
    last = 0
    while True:
        rows = session.execute(
            select(AuditEvent).where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(batch)
        ).scalars().all()
        if not rows:
            break
        for ev in rows:
            yield {"type": "event", "seq": int(ev.seq), "at": _canonical_time(ev.at), "actor": ev.actor, "kind": ev.kind,
                   "subject_key": ev.subject_key, "payload": ev.payload, "key_id": ev.key_id,
                   "prev_hash": ev.prev_hash, "hash": ev.hash}
            last = ev.seq
    for cp in session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.id)).scalars():
        yield {"type": "checkpoint", **checkpoint_dict(cp)}


def event_count(session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(AuditEvent)).scalar_one())


@dataclass
class _Ev:
    seq: int
    at: str
    actor: str
    kind: str
    subject_key: str | None
    payload: dict
    key_id: str | None
    prev_hash: str
    hash: str


@dataclass
class ExportVerification:
    ok: bool
    reason: str | None
    events: int
    checkpoint_seq: int | None
    covered: int = 0
    content_checked: bool = False
    notes: list[str] = field(default_factory=list)


def verify_export(
    lines: Iterable[dict[str, Any]],
    checkpoint: dict[str, Any],
    public_key: Any,
    *,
    hmac_keys: AuditKeys | None = None,
) -> ExportVerification:
    """Check an exported chain offline against a checkpoint the verifier trusts (DESIGN §10).

    Without the HMAC key this proves: the checkpoint was signed by the holder of ``public_key``;
    the export's events 1..checkpoint.seq are all there, in order, each linking to its
    predecessor's hash, and the event at the checkpoint's seq has the signed head hash — so
    nothing up to the checkpoint was deleted, reordered, truncated or rewritten with new hashes.
    It does not prove that an event's *content* matches its hash (that needs the HMAC key: pass
    ``hmac_keys`` to check it too). Events after the checkpoint are reported, not covered."""
    problem = audit_keys.checkpoint_problem(checkpoint, public_key)
    if problem is not None:
        return ExportVerification(False, problem, 0, None)
    cp_seq, cp_head = int(checkpoint["seq"]), str(checkpoint["head"])
    prev, expected, count = GENESIS, 1, 0
    reached_head = None
    notes: list[str] = []
    for line in lines:
        if line.get("type") == "checkpoint":
            if line.get("key_id") == checkpoint["key_id"] and audit_keys.checkpoint_problem(line, public_key) is not None:
                notes.append(f"checkpoint line for seq {line.get('seq')} has an invalid signature (ignored)")
            continue
        if line.get("type") != "event":
            return ExportVerification(False, f"unknown line type {line.get('type')!r}", count, cp_seq)
        try:
            ev = _Ev(**{k: line[k] for k in _Ev.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            return ExportVerification(False, f"malformed event line after seq {expected - 1}: {exc}", count, cp_seq)
        count += 1
        problem = _link_problem(ev, prev, expected, hmac_keys)
        if problem is not None:
            if ev.seq > cp_seq and expected > cp_seq:
                notes.append(f"after the checkpoint, at seq {ev.seq}: {problem}")
                break
            return ExportVerification(False, f"seq {ev.seq}: {problem}", count, cp_seq, content_checked=hmac_keys is not None)
        if ev.seq == cp_seq:
            reached_head = ev.hash
        prev, expected = ev.hash, expected + 1
    last = expected - 1
    if last < cp_seq:
        return ExportVerification(
            False, f"export truncated: it ends at seq {last}, the checkpoint covers seq {cp_seq}", count, cp_seq
        )
    if reached_head != cp_head:
        return ExportVerification(
            False, f"event seq {cp_seq} has hash {reached_head}, the checkpoint signed head {cp_head} (chain rewritten)",
            count, cp_seq,
        )
    if last > cp_seq:
        notes.append(f"{last - cp_seq} event(s) after seq {cp_seq} are not covered by this checkpoint")
    return ExportVerification(True, None, count, cp_seq, cp_seq, hmac_keys is not None, notes)
