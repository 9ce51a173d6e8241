"""The in-process manifest cache: invalidated on alias moves, publishes and checkpoints, in every
API process (PostgreSQL LISTEN/NOTIFY), and in embedded mode by ``PRAGMA data_version``."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select, text

from service.audit.service import sign_checkpoint
from service.model_registry.manifest_cache import ManifestCache, changed
from service.model_registry.service import move_alias
from service.models import Model, ModelVersion
from service.models._types import utcnow

from tests.service.deletion_request.test_deletion_durability import _free_port, _start

SPEC = {"name": "mc", "architecture": "mlp", "input_shape": [4], "num_classes": 3, "linearize": "last:1"}


def _version(session, store, model, number):
    content = hashlib.sha256(f"mc{number}".encode()).digest() * 8
    art = store.put_bytes(content, prefix=f"weights/{model.id}", suffix=".safetensors")
    v = ModelVersion(model_id=model.id, number=number, artifact_uri=art.uri, sha256=art.sha256, size_bytes=art.size,
                     metrics={}, bound={}, state="live", created_at=utcnow())
    session.add(v)
    session.flush()
    return v


def _wait_for(fn, what: str, deadline_s: float = 20.0):
    """Poll until ``fn()`` is truthy (a correctness wait with a generous deadline, not a timing)."""
    end = time.monotonic() + deadline_s
    while True:
        out = fn()
        if out:
            return out
        if time.monotonic() > end:
            raise AssertionError(f"never saw: {what}")
        time.sleep(0.05)


def _wait_ready(cache: ManifestCache) -> None:
    _wait_for(lambda: cache.ready, "the listener connected")


@pytest.mark.integration
def test_two_api_processes_see_alias_moves_publishes_and_checkpoints(committed_app, settings, tmp_path):
    app = committed_app.app
    assert committed_app.post("/v1/models", json=SPEC, headers=committed_app.auth("admin")).status_code == 201
    factory = app.state.session_factory
    with factory.begin() as s:
        model = s.execute(select(Model).where(Model.name == "mc")).scalar_one()
        v1 = _version(s, app.state.store, model, 1)
        _version(s, app.state.store, model, 2)
        move_alias(s, model, "latest", v1, "pipeline", system=True)
        move_alias(s, model, "production", v1, "op")
    pa, pb = _free_port(), _free_port()
    a = _start(settings, pa, tmp_path / "a.log")
    b = _start(settings, pb, tmp_path / "b.log")
    try:
        serve, op = committed_app.auth("serving"), committed_app.auth("operator")
        url_b = f"http://127.0.0.1:{pb}/v1/models/mc/versions"
        first = httpx.get(f"{url_b}/production", headers=serve, timeout=10)
        assert first.status_code == 200 and first.json()["number"] == 1
        e1 = first.headers["etag"]
        # B answers from its cache now: a revalidation is a 304 with no body
        again = httpx.get(f"{url_b}/production", headers={**serve, "If-None-Match": e1}, timeout=10)
        assert again.status_code == 304 and again.content == b""

        # 1. the alias moves through process A: B's manifest and ETag follow
        r = httpx.post(f"http://127.0.0.1:{pa}/v1/models/mc/aliases/production", json={"version": 2}, headers=op, timeout=10)
        assert r.status_code == 200, r.text

        def moved():
            r = httpx.get(f"{url_b}/production", headers={**serve, "If-None-Match": e1}, timeout=10)
            return r if r.status_code == 200 else None

        r = _wait_for(moved, "B's production manifest after the move through A")
        assert r.json()["number"] == 2 and r.headers["etag"] != e1

        # 2. a publish by another process (a worker: new version, latest moves) reaches B
        latest = httpx.get(f"{url_b}/latest", headers=serve, timeout=10)
        assert latest.json()["number"] == 1
        with factory.begin() as s:
            model = s.execute(select(Model).where(Model.name == "mc")).scalar_one()
            v3 = _version(s, app.state.store, model, 3)
            move_alias(s, model, "latest", v3, "pipeline", system=True)
        _wait_for(lambda: httpx.get(f"{url_b}/latest", headers=serve, timeout=10).json()["number"] == 3, "B's latest = 3")

        # 3. a signed checkpoint (carried by every manifest) reaches B's cached body
        before = httpx.get(f"{url_b}/latest", headers=serve, timeout=10).json()["audit_checkpoint"]
        with factory.begin() as s:
            cp = sign_checkpoint(s)
        assert before is None or before["signature"] != cp.signature
        _wait_for(lambda: (httpx.get(f"{url_b}/latest", headers=serve, timeout=10).json()["audit_checkpoint"] or {}).get("signature")
                  == cp.signature, "B's manifest carrying the new checkpoint")
    finally:
        for p in (a, b):
            p.terminate()
            p.wait(timeout=10)


def test_postgres_listener_invalidates_on_a_notify_from_another_connection(engine):
    cache = ManifestCache(engine)
    try:
        _wait_ready(cache)
        tok = cache.token()
        cache.put(tok, "m", "latest", '"e"', b"{}")
        assert cache.get("m", "latest") == ('"e"', b"{}")
        with engine.begin() as conn:  # another connection, like another process: only NOTIFY reaches us
            conn.execute(text("SELECT pg_notify('lethe_manifests', '')"))
        _wait_for(lambda: cache.get("m", "latest") is None, "the entry dropped on NOTIFY")
    finally:
        cache.close()


def test_a_read_that_started_before_an_invalidation_is_not_stored(engine):
    cache = ManifestCache(engine)
    try:
        _wait_ready(cache)
        tok = cache.token()
        cache.invalidate()  # a change committed while the reader was reading
        cache.put(tok, "m", "latest", '"old"', b"old")
        assert cache.get("m", "latest") is None
        cache.put(cache.token(), "m", "latest", '"new"', b"new")
        assert cache.get("m", "latest") == ('"new"', b"new")
    finally:
        cache.close()


def test_sqlite_cache_sees_commits_of_another_process_by_data_version(tmp_path: Path):
    path = tmp_path / "lethe.db"
    eng = create_engine(f"sqlite:///{path}")
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    cache = ManifestCache(eng)
    try:
        assert cache.ready
        cache.put(cache.token(), "m", "latest", '"e"', b"{}")
        assert cache.get("m", "latest") == ('"e"', b"{}")
        other = sqlite3.connect(path)  # a job process writing: it cannot notify anyone
        with other:
            other.execute("INSERT INTO t VALUES (1)")
        other.close()
        assert cache.get("m", "latest") is None
        cache.put(cache.token(), "m", "latest", '"f"', b"{}")
        assert cache.get("m", "latest") == ('"f"', b"{}")  # nothing changed since: kept
    finally:
        cache.close()
        eng.dispose()


def test_changed_in_a_transaction_empties_the_cache_of_this_process(db, engine):
    cache = ManifestCache(engine)
    try:
        _wait_ready(cache)
        cache.put(cache.token(), "m", "latest", '"e"', b"{}")
        changed(db)
        assert cache.get("m", "latest") is None
    finally:
        cache.close()


def test_a_new_checkpoint_changes_the_etag_so_a_revalidation_gets_it(committed_app, engine):
    """The manifest carries the latest checkpoint: a client holding the old ETag must get a 200
    with the new checkpoint (not a 304 keeping the old one), from the cache and the database
    paths alike, and a long-poll must wake for a checkpoint."""
    import threading

    from sqlalchemy.orm import Session

    from service.audit.service import append_event

    c = committed_app
    assert c.post("/v1/models", json=SPEC, headers=c.auth("admin")).status_code == 201
    with c.app.state.session_factory.begin() as s:
        model = s.execute(select(Model).where(Model.name == "mc")).scalar_one()
        move_alias(s, model, "latest", _version(s, c.app.state.store, model, 1), "test", system=True)
    serve = c.auth("serving")
    url = "/v1/models/mc/versions/latest"

    def sign() -> dict:
        with Session(engine) as s, s.begin():
            append_event(s, actor="test", kind="test.event", payload={"n": 1})
            cp = sign_checkpoint(s)
            return {"seq": cp.seq, "signature": cp.signature}

    sign()
    old = c.get(url, headers=serve).headers["etag"]
    assert c.get(url, headers={**serve, "If-None-Match": old}).status_code == 304  # cached now
    cp = sign()
    r = c.get(url, headers={**serve, "If-None-Match": old})
    assert r.status_code == 200, r.status_code
    assert r.headers["etag"] != old and r.json()["audit_checkpoint"]["signature"] == cp["signature"]
    assert c.get(url, headers={**serve, "If-None-Match": r.headers["etag"]}).status_code == 304

    etag = r.headers["etag"]
    signed: list[dict] = []
    th = threading.Thread(target=lambda: (time.sleep(0.5), signed.append(sign())))
    th.start()
    t0 = time.monotonic()
    woke = c.get(f"{url}?wait=5", headers={**serve, "If-None-Match": etag})
    th.join()
    assert woke.status_code == 200 and time.monotonic() - t0 < 4
    assert woke.json()["audit_checkpoint"]["signature"] == signed[0]["signature"]
