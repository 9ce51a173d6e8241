"""The keyed chain and signed checkpoints (DESIGN §10): server-side verification catches edits,
deletions, reordering and truncation up to the latest checkpoint; forged checkpoints and ones
signed by another key fail naming why; an export verifies offline with only the public key
(an older genuine checkpoint verifies its prefix); the old unkeyed chain is re-linked once;
production refuses placeholder keys."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from service.audit import keys as audit_keys
from service.audit.keys import AuditKeys, load_public_key
from service.audit.service import (
    GENESIS,
    append_event,
    canonical,
    checkpoint_dict,
    legacy_hash,
    rekey_legacy_chain,
    sign_checkpoint,
    verify_chain,
    verify_export,
)
from service.core.config import AuditSettings, Settings
from service.models import AuditCheckpoint, AuditEvent, ModelVersion


def _append(db, n: int, start: int = 0) -> list[AuditEvent]:
    out = [append_event(db, actor="t", kind="test.cp", payload={"i": start + i}) for i in range(n)]
    db.flush()
    return out


def _other_keys() -> AuditKeys:
    return AuditKeys.from_settings(AuditSettings(hmac_key="another-hmac-key-0123456789-0123456789",
                                                 signing_key=audit_keys.new_signing_seed_b64()))


def _verify(client) -> dict:
    r = client.get("/v1/audit/verify", headers=client.auth("auditor"))
    assert r.status_code == 200, r.text
    return r.json()


def test_checkpoint_and_public_key_routes(client, db):
    assert client.get("/v1/audit/checkpoint", headers=client.auth("auditor")).status_code in (200, 404)
    events = _append(db, 3)
    cp = sign_checkpoint(db)
    r = client.get("/v1/audit/checkpoint", headers=client.auth("serving"))
    assert r.status_code == 200
    body = r.json()
    assert body["seq"] == events[-1].seq and body["head"] == events[-1].hash and body["algorithm"] == "Ed25519"
    pub = client.get("/v1/audit/public-key")  # no token needed
    assert pub.status_code == 200
    public = load_public_key(pub.text)
    assert pub.json()["key_id"] == body["key_id"] == cp.key_id
    assert load_public_key(pub.json()["public_key_b64"]) is not None
    assert audit_keys.checkpoint_problem(body, public) is None
    # The periodic tick signs nothing new when the head is already covered.
    assert sign_checkpoint(db, only_if_new=True) is None
    _append(db, 1)
    assert sign_checkpoint(db, only_if_new=True).seq == events[-1].seq + 1
    v = _verify(client)
    assert v["ok"] and v["checkpoint_seq"] == events[-1].seq + 1 and v["events_after_checkpoint"] == 0


def test_deleting_the_last_event_is_detected_by_the_checkpoint(client, db):
    events = _append(db, 5)
    sign_checkpoint(db)
    db.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": events[-1].seq})
    v = _verify(client)
    assert v["ok"] is False and "truncated" in v["reason"] and v["first_broken_seq"] == events[-1].seq


def test_events_after_the_last_checkpoint_are_the_window(client, db):
    _append(db, 3)
    cp = sign_checkpoint(db)
    tail = _append(db, 2, start=3)
    v = _verify(client)
    assert v["ok"] and v["checkpoint_seq"] == cp.seq and v["events_after_checkpoint"] == 2
    db.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": tail[-1].seq})
    assert _verify(client)["ok"] is True  # a tail deletion after the checkpoint: the documented window


def test_reordered_events_are_detected(client, db):
    events = _append(db, 5)
    a, b = events[1].seq, events[2].seq
    db.execute(text("UPDATE audit_events SET seq = -1 WHERE seq = :a"), {"a": a})
    db.execute(text("UPDATE audit_events SET seq = :a WHERE seq = :b"), {"a": a, "b": b})
    db.execute(text("UPDATE audit_events SET seq = :b WHERE seq = -1"), {"b": b})
    v = _verify(client)
    assert v["ok"] is False and v["first_broken_seq"] == a


def test_a_forged_checkpoint_row_fails_naming_why(client, db):
    events = _append(db, 4)
    cp = sign_checkpoint(db)
    db.execute(text("UPDATE audit_checkpoints SET head_hash = :h WHERE id = :i"), {"h": events[1].hash, "i": cp.id})
    db.expire_all()
    v = _verify(client)
    assert v["ok"] is False and "forged" in v["reason"]


def test_a_checkpoint_signed_by_another_key_fails_naming_why(client, db):
    _append(db, 2)
    sign_checkpoint(db, keys=_other_keys())
    v = _verify(client)
    assert v["ok"] is False and "another key" in v["reason"]


def test_a_chain_rewritten_under_an_old_checkpoint_is_detected(client, db):
    """Even with the HMAC key, rewriting history below a checkpoint breaks its signed head."""
    events = _append(db, 4)
    sign_checkpoint(db)
    keys = audit_keys.current()
    prev = events[0].prev_hash
    for ev in events:  # rewrite every event consistently with the key
        payload = {"i": 100 + ev.payload["i"]}
        h = keys.link(ev.key_id, prev, canonical(ev.seq, ev.at, ev.actor, ev.kind, ev.subject_key, payload, ev.key_id))
        db.execute(text("UPDATE audit_events SET payload = CAST(:p AS jsonb), prev_hash = :pr, hash = :h WHERE seq = :s"),
                   {"p": json.dumps(payload), "pr": prev, "h": h, "s": ev.seq})
        prev = h
    v = _verify(client)
    assert v["ok"] is False and "rewritten" in v["reason"]


def test_the_latest_checkpoint_is_in_every_manifest(client, db):
    from tests.service.deletion_request.conftest import _model

    model = _model("cp-model")
    db.add(model)
    db.flush()
    db.add(ModelVersion(model_id=model.id, number=1, sha256="0" * 64, size_bytes=1))
    db.flush()
    _append(db, 1)
    cp = sign_checkpoint(db)
    r = client.get("/v1/models/cp-model/versions/1", headers=client.auth("serving"))
    assert r.status_code == 200, r.text
    assert r.json()["audit_checkpoint"] == checkpoint_dict(cp)
    items = client.get("/v1/models/cp-model/versions", headers=client.auth("serving")).json()["items"]
    assert items[0]["audit_checkpoint"]["seq"] == cp.seq


def test_the_old_unkeyed_chain_is_relinked_once(db):
    """Events written by the previous release: sha256 links, no key id."""
    prev = GENESIS
    start = (db.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1)) or 0)
    assert start == 0
    for i in range(1, 4):
        ev = AuditEvent(seq=i, actor="old", kind="old.event", payload={"i": i}, prev_hash=prev, hash="")
        db.add(ev)
        db.flush()
        ev.hash = legacy_hash(prev, canonical(ev.seq, ev.at, ev.actor, ev.kind, None, ev.payload))
        prev = ev.hash
        db.flush()
    old_head = prev
    assert verify_chain(db).ok is False  # not keyed yet
    assert rekey_legacy_chain(db) == 3
    db.expire_all()
    rows = db.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
    assert all(r.key_id == audit_keys.current().current_hmac_id for r in rows)
    note = rows[3]
    assert note.kind == "audit.chain_rekeyed"
    assert note.payload["events_relinked"] == 3 and note.payload["old_chain_ok"] is True
    assert note.payload["old_head"] == old_head
    result = verify_chain(db)
    assert result.ok and result.checkpoint_seq == 4
    assert rekey_legacy_chain(db) == 0  # once


def test_a_broken_old_chain_is_relinked_but_recorded(db):
    prev = GENESIS
    for i in range(1, 3):
        ev = AuditEvent(seq=i, actor="old", kind="old.event", payload={"i": i}, prev_hash=prev, hash=f"{i:064d}")
        db.add(ev)
        prev = ev.hash
    db.flush()
    assert rekey_legacy_chain(db) == 2
    note = db.scalars(select(AuditEvent).where(AuditEvent.kind == "audit.chain_rekeyed")).one()
    assert note.payload["old_chain_ok"] is False and note.payload["old_first_broken_seq"] == 1


def test_production_refuses_placeholder_audit_keys():
    good = {"environment": "production", "security": {"secret_key": "s" * 40}}
    with pytest.raises(ValidationError, match="LETHE_AUDIT__HMAC_KEY"):
        Settings(**good)
    with pytest.raises(ValidationError, match="LETHE_AUDIT__SIGNING_KEY"):
        Settings(**good, audit={"hmac_key": "h" * 40})
    ok = Settings(**good, audit={"hmac_key": "h" * 40, "signing_key": audit_keys.new_signing_seed_b64()})
    assert AuditKeys.from_settings(ok.audit).signing_key_id != AuditKeys.from_settings(AuditSettings()).signing_key_id
    with pytest.raises(ValueError, match="32-byte"):
        AuditKeys.from_settings(AuditSettings(signing_key=base64.b64encode(b"short").decode()))


# ----------------------------------------------------------------------------- export, offline


def _cli(database_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "LETHE_DATABASE__URL": database_url, "LETHE_ENVIRONMENT": "test"}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, env=env, check=check)


def _commit_events(engine, n: int, *, checkpoint: bool) -> dict | None:
    with Session(engine) as s, s.begin():
        for i in range(n):
            append_event(s, actor="t", kind="test.export", subject_key="ab" * 32, payload={"i": i, "x": i / 3})
        cp = sign_checkpoint(s) if checkpoint else None
        return checkpoint_dict(cp) if cp is not None else None


def test_export_verifies_offline_and_tampering_fails_naming_why(clean_tables, database_url, tmp_path):
    engine = create_engine(database_url)
    try:
        old_cp = _commit_events(engine, 4, checkpoint=True)
        new_cp = _commit_events(engine, 3, checkpoint=True)
        _commit_events(engine, 2, checkpoint=False)  # after the last checkpoint
    finally:
        engine.dispose()
    export = tmp_path / "audit.jsonl"
    _cli(database_url, "audit", "export", "--out", str(export))
    pub = tmp_path / "pub.pem"
    pub.write_text(_cli(database_url, "audit", "public-key").stdout)
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(old_cp))
    new.write_text(json.dumps(new_cp))
    lines = export.read_text().splitlines()
    assert sum(json.loads(x)["type"] == "event" for x in lines) == 9
    assert sum(json.loads(x)["type"] == "checkpoint" for x in lines) == 2

    def verify(exp, cp, *extra):
        return _cli(database_url, "audit", "verify", str(exp), "--checkpoint", str(cp), "--public-key", str(pub), *extra,
                    check=False)

    r = verify(export, new)
    assert r.returncode == 0 and "7 events verified up to checkpoint seq 7" in r.stdout, r.stdout + r.stderr
    assert "2 event(s) after seq 7 are not covered" in r.stdout
    r = verify(export, old)  # an older genuine checkpoint verifies its prefix
    assert r.returncode == 0 and "4 events verified up to checkpoint seq 4" in r.stdout

    def tampered(name, edit):
        rows = [json.loads(x) for x in lines]
        rows = edit(rows)
        p = tmp_path / name
        p.write_text("\n".join(json.dumps(x) for x in rows) + "\n")
        return p

    deleted = tampered("deleted.jsonl", lambda rows: [x for x in rows if x.get("seq") != 3 or x["type"] != "event"])
    r = verify(deleted, new)
    assert r.returncode == 1 and "missing event(s) before seq 4" in r.stdout
    truncated = tampered("trunc.jsonl", lambda rows: [x for x in rows if x["type"] != "event" or x["seq"] <= 5])
    r = verify(truncated, new)
    assert r.returncode == 1 and "truncated" in r.stdout
    assert verify(truncated, old).returncode == 0  # the prefix the old checkpoint covers is intact

    def swap(rows):
        rows[1], rows[2] = rows[2], rows[1]
        return rows

    r = verify(tampered("reordered.jsonl", swap), new)
    assert r.returncode == 1 and "seq 3" in r.stdout

    def edit_payload(rows):
        rows[2]["payload"] = {"i": 99, "x": 0.0}
        return rows

    edited = tampered("edited.jsonl", edit_payload)
    # Without the HMAC key the content is not checked (the README says so); with it, it is.
    assert verify(edited, new).returncode == 0
    key = tmp_path / "hmac.key"
    key.write_text(AuditSettings().hmac_key)
    r = verify(edited, new, "--hmac-key-file", str(key))
    assert r.returncode == 1 and "seq 3" in r.stdout and "content" in r.stdout
    assert verify(export, new, "--hmac-key-file", str(key)).returncode == 0

    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**new_cp, "seq": 9, "head": json.loads(lines[8])["hash"]}))
    r = verify(export, forged)
    assert r.returncode == 1 and "forged" in r.stdout
    other = _other_keys()
    key_id, sig = other.sign(new_cp["seq"], new_cp["head"], new_cp["at"])
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({**new_cp, "key_id": key_id, "signature": sig}))
    r = verify(export, foreign)
    assert r.returncode == 1 and "another key" in r.stdout


def test_verify_export_in_process_names_the_rewritten_head(db):
    events = _append(db, 3)
    cp = checkpoint_dict(sign_checkpoint(db))
    from service.audit.service import export_lines

    rows = list(export_lines(db))
    # A consistently relinked export (new hashes all the way) no longer ends at the signed head.
    prev = GENESIS
    for r in rows:
        if r["type"] == "event":
            r["prev_hash"] = prev
            r["hash"] = prev = legacy_hash(prev, b"x")
    res = verify_export(rows, cp, audit_keys.current().public_key)
    assert not res.ok and "rewritten" in res.reason and str(events[-1].seq) in res.reason


def test_hmac_key_rotation_keeps_old_events_verifiable(db):
    old = AuditKeys.from_settings(AuditSettings(hmac_key="old-hmac-key-0123456789-0123456789-abc"))
    new = AuditKeys.from_settings(AuditSettings(hmac_key="new-hmac-key-0123456789-0123456789-abc",
                                                hmac_previous_keys=["old-hmac-key-0123456789-0123456789-abc"]))
    first = [append_event(db, actor="t", kind="k", payload={"i": i}, keys=old) for i in range(2)]
    later = [append_event(db, actor="t", kind="k", payload={"i": i}, keys=new) for i in range(2)]
    assert first[0].key_id == old.current_hmac_id != later[0].key_id == new.current_hmac_id
    assert verify_chain(db, keys=new).ok
    forgot = AuditKeys.from_settings(AuditSettings(hmac_key="new-hmac-key-0123456789-0123456789-abc"))
    result = verify_chain(db, keys=forgot)
    assert not result.ok and result.first_broken_seq == first[0].seq and "unknown HMAC key id" in result.reason


def test_a_new_signing_key_signs_the_head_at_start(db):
    from service.audit.service import sign_after_key_rotation

    _append(db, 2)
    sign_checkpoint(db, keys=_other_keys())  # made with the key used before the rotation
    assert not verify_chain(db).ok
    assert sign_after_key_rotation(db) is not None
    assert sign_after_key_rotation(db) is None
    result = verify_chain(db)
    assert result.ok and result.events_after_checkpoint == 0
