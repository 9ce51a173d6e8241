"""Versions: manifests, ETags, long-poll, weights (ETag, Range), revocation; aliases."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.model_registry.service import AliasTargetRevoked, move_alias, resolve_version
from service.models import AliasEvent, AuditEvent, Model, ModelVersion
from service.models._types import utcnow

SPEC = {"name": "srv", "architecture": "mlp", "input_shape": [4], "num_classes": 3, "linearize": "last:1",
        "method_config": {"target_scale": 2.5}}


def _publish(session, store, model, number, *, content=None, parent=None, alias=True, private=None):
    content = content or hashlib.sha256(f"w{number}".encode()).digest() * 64
    art = store.put_bytes(content, prefix=f"weights/{model.id}", suffix=".safetensors")
    v = ModelVersion(model_id=model.id, number=number, artifact_uri=art.uri, sha256=art.sha256, size_bytes=art.size,
                     parent_id=parent.id if parent else None, metrics={"eval_accuracy": 0.5 + number / 100},
                     bound={"kl_nats": number * 1e-6}, state="live", created_at=utcnow() + timedelta(microseconds=number),
                     private_uri=private)
    session.add(v)
    session.flush()
    if alias:
        move_alias(session, model, "latest", v, "pipeline", system=True)
    return v, content


@pytest.fixture
def model(client, db):
    assert client.post("/v1/models", json=SPEC, headers=client.auth("admin")).status_code == 201
    return db.execute(select(Model)).scalar_one()


def test_manifest_fields_and_refs(client, db, model):
    store = client.app.state.store
    v1, c1 = _publish(db, store, model, 1)
    v2, c2 = _publish(db, store, model, 2, parent=v1)
    h = client.auth("serving")
    m = client.get("/v1/models/srv/versions/latest", headers=h).json()
    assert m["number"] == 2 and m["parent"] == 1 and m["sha256"] == hashlib.sha256(c2).hexdigest()
    assert m["size_bytes"] == len(c2) and m["format"] == "safetensors" and m["state"] == "live" and m["revoked_at"] is None
    assert m["linearize"] == "last:1" and m["input_shape"] == [4] and m["num_classes"] == 3 and m["target_scale"] == 2.5
    assert m["metrics"] == {"eval_accuracy": 0.52} and m["bound"] == {"kl_nats": 2e-6} and m["aliases"] == ["latest"]
    assert m["weights_url"] == "/v1/models/srv/versions/2/weights" and m["model"] == "srv"
    assert client.get("/v1/models/srv/versions/1", headers=h).json()["parent"] is None
    assert client.get("/v1/models/srv/versions/production", headers=h).status_code == 404
    for bad in ("abc", "-1", "1.0", "99999999999999999999"):
        r = client.get(f"/v1/models/srv/versions/{bad}", headers=h)
        assert r.status_code == 404 and r.json()["type"].endswith("version-not-found"), bad
    assert resolve_version(db, model, "latest").id == v2.id


def test_etag_304_has_no_body_and_tracks_alias_changes(client, db, model):
    store = client.app.state.store
    v1, _ = _publish(db, store, model, 1)
    h = client.auth("serving")
    r = client.get("/v1/models/srv/versions/1", headers=h)
    etag = r.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    r304 = client.get("/v1/models/srv/versions/1", headers={**h, "If-None-Match": etag})
    assert r304.status_code == 304 and r304.content == b"" and r304.headers["etag"] == etag
    assert client.get("/v1/models/srv/versions/1", headers={**h, "If-None-Match": '"other", ' + etag}).status_code == 304
    # promoting v1 changes its manifest (aliases): the old tag no longer matches
    move_alias(db, model, "production", v1, "op")
    db.flush()
    r = client.get("/v1/models/srv/versions/1", headers={**h, "If-None-Match": etag})
    assert r.status_code == 200 and r.json()["aliases"] == ["latest", "production"] and r.headers["etag"] != etag


def test_versions_list_newest_first_with_cursor(client, db, model):
    store = client.app.state.store
    prev = None
    for n in range(1, 6):
        prev, _ = _publish(db, store, model, n, parent=prev)
    h = client.auth("auditor")
    page = client.get("/v1/models/srv/versions", params={"limit": 2}, headers=h).json()
    numbers = [v["number"] for v in page["items"]]
    while page["next_cursor"]:
        page = client.get("/v1/models/srv/versions", params={"limit": 2, "cursor": page["next_cursor"]}, headers=h).json()
        numbers += [v["number"] for v in page["items"]]
    assert numbers == [5, 4, 3, 2, 1]


def test_weights_etag_ranges_and_never_private(client, db, model):
    store = client.app.state.store
    secret = store.put_bytes(b"NOISE-FREE PRIVATE WEIGHTS", prefix="private", suffix=".safetensors")
    v1, content = _publish(db, store, model, 1, private=secret.uri)
    size = len(content)
    h = client.auth("serving")
    w = client.get("/v1/models/srv/versions/latest/weights", headers=h)
    assert w.status_code == 200 and w.content == content and b"PRIVATE" not in w.content
    assert w.headers["etag"] == f'"{hashlib.sha256(content).hexdigest()}"' and w.headers["accept-ranges"] == "bytes"
    assert w.headers["content-type"] == "application/vnd.safetensors" and int(w.headers["content-length"]) == size
    r = client.get("/v1/models/srv/versions/1/weights", headers={**h, "If-None-Match": w.headers["etag"]})
    assert r.status_code == 304 and r.content == b""
    cases = {"bytes=0-0": (0, 0), "bytes=100-": (100, size - 1), "bytes=-10": (size - 10, size - 1),
             f"bytes=5-{size + 100}": (5, size - 1)}
    for rng, (a, b) in cases.items():
        r = client.get("/v1/models/srv/versions/1/weights", headers={**h, "Range": rng})
        assert r.status_code == 206 and r.content == content[a:b + 1], rng
        assert r.headers["content-range"] == f"bytes {a}-{b}/{size}"
    for rng in (f"bytes={size}-", "bytes=9-3", "bytes=0-1,4-5", "items=0-1", "bytes=-", "bytes=-0"):
        r = client.get("/v1/models/srv/versions/1/weights", headers={**h, "Range": rng})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}", rng
        assert r.headers["content-type"].startswith("application/problem+json")


def test_revoked_is_gone_everywhere(client, db, model):
    store = client.app.state.store
    v1, _ = _publish(db, store, model, 1)
    h = client.auth("serving")
    etag = client.get("/v1/models/srv/versions/1", headers=h).headers["etag"]
    v2, _ = _publish(db, store, model, 2, parent=v1)
    v1.state, v1.revoked_at = "revoked", utcnow()
    db.flush()
    for path, extra in [("/v1/models/srv/versions/1", {}), ("/v1/models/srv/versions/1", {"If-None-Match": etag}),
                        ("/v1/models/srv/versions/1/weights", {}), ("/v1/models/srv/versions/1/weights", {"Range": "bytes=0-1"})]:
        r = client.get(path, headers={**h, **extra})
        assert r.status_code == 410 and r.json()["type"].endswith("version-revoked") and r.json()["revoked_at"], path
    listed = client.get("/v1/models/srv/versions", headers=h).json()["items"]
    assert [(v["number"], v["state"]) for v in listed] == [(2, "live"), (1, "revoked")]
    # weights deleted from storage although the row still says live: 410, never a 500
    store.delete(v2.artifact_uri)
    assert client.get("/v1/models/srv/versions/2/weights", headers=h).status_code == 410


def test_alias_moves_history_audit_and_refusals(client, db, model):
    store = client.app.state.store
    v1, _ = _publish(db, store, model, 1)
    v2, _ = _publish(db, store, model, 2, parent=v1)
    op = client.auth("operator")
    r = client.post("/v1/models/srv/aliases/production", json={"version": 2}, headers=op)
    assert r.status_code == 200 and r.json()["aliases"] == {"latest": 2, "production": 2}
    r = client.post("/v1/models/srv/aliases/production", json={"version": 1}, headers=op)
    assert r.json()["aliases"] == {"latest": 2, "production": 1}
    # same target again: no new history entry
    client.post("/v1/models/srv/aliases/production", json={"version": 1}, headers=op)
    hist = client.get("/v1/models/srv/aliases", headers=client.auth("auditor")).json()["history"]
    prod = [(e["from_version"], e["to_version"]) for e in hist if e["alias"] == "production"]
    assert prod == [(2, 1), (None, 2)]
    assert [(e["from_version"], e["to_version"], e["actor"]) for e in hist if e["alias"] == "latest"] == [(1, 2, "pipeline"), (None, 1, "pipeline")]
    moved = db.execute(select(AuditEvent).where(AuditEvent.kind == "alias.moved").order_by(AuditEvent.seq.desc())).scalars().first()
    assert moved.payload == {"model": "srv", "alias": "production", "from": 2, "to": 1} and moved.actor.startswith("token:")
    # refusals, each changing nothing
    n_events = len(db.execute(select(AliasEvent)).scalars().all())
    r = client.post("/v1/models/srv/aliases/latest", json={"version": 1}, headers=op)
    assert r.status_code == 409 and r.json()["type"].endswith("alias-not-movable")
    assert client.post("/v1/models/srv/aliases/staging", json={"version": 1}, headers=op).status_code == 404
    assert client.post("/v1/models/srv/aliases/production", json={"version": 9}, headers=op).status_code == 404
    assert client.post("/v1/models/srv/aliases/production", json={"version": 0}, headers=op).status_code == 422
    assert client.post("/v1/models/srv/aliases/production", json={"version": 1, "x": 1}, headers=op).status_code == 422
    v2.state = "revoked"
    db.flush()
    r = client.post("/v1/models/srv/aliases/production", json={"version": 2}, headers=op)
    assert r.status_code == 409 and "revoked" in r.json()["detail"]
    with pytest.raises(AliasTargetRevoked):
        move_alias(db, model, "latest", v2, "pipeline", system=True)
    assert len(db.execute(select(AliasEvent)).scalars().all()) == n_events
    assert client.get("/v1/models/srv/aliases", headers=op).json()["aliases"]["production"] == 1


def test_wait_bounds_and_non_alias_refs(client, db, model):
    _publish(db, client.app.state.store, model, 1)
    h = client.auth("serving")
    etag = client.get("/v1/models/srv/versions/1", headers=h).headers["etag"]
    for bad in ("0", "-1", "61", "abc"):
        assert client.get(f"/v1/models/srv/versions/latest?wait={bad}", headers=h).status_code == 422, bad
    t0 = time.monotonic()
    # a number never changes: no long-poll; no If-None-Match: answer at once
    assert client.get("/v1/models/srv/versions/1?wait=5", headers={**h, "If-None-Match": etag}).status_code == 304
    assert client.get("/v1/models/srv/versions/latest?wait=5", headers=h).status_code == 200
    assert time.monotonic() - t0 < 2


def test_long_poll_wakes_on_publish_and_does_not_block_the_loop(committed_app, engine):
    c = committed_app
    assert c.post("/v1/models", json=SPEC, headers=c.auth("admin")).status_code == 201
    store = c.app.state.store
    with Session(engine) as s, s.begin():
        _publish(s, store, s.execute(select(Model)).scalar_one(), 1)
    h = c.auth("serving")
    etag = c.get("/v1/models/srv/versions/latest", headers=h).headers["etag"]
    results: dict[str, object] = {}

    def poll():
        t0 = time.monotonic()
        r = c.get("/v1/models/srv/versions/latest?wait=2", headers={**h, "If-None-Match": etag})
        results["poll"] = (r.status_code, r.json()["number"] if r.status_code == 200 else None, time.monotonic() - t0)

    th = threading.Thread(target=poll)
    th.start()
    time.sleep(0.3)
    # other requests are served while the long-poll waits
    t0 = time.monotonic()
    assert c.get("/v1/models/srv", headers=h).status_code == 200
    assert time.monotonic() - t0 < 0.5
    with Session(engine) as s, s.begin():
        m = s.execute(select(Model)).scalar_one()
        parent = s.execute(select(ModelVersion).where(ModelVersion.number == 1)).scalar_one()
        _publish(s, store, m, 2, parent=parent)
    th.join(timeout=5)
    status, number, took = results["poll"]
    assert status == 200 and number == 2 and took < 1.5


@pytest.mark.parametrize("header", ["*", "W/{etag}", '"nope", W/{etag}', ' "nope" ,  * '])
def test_if_none_match_star_and_weak_tags_revalidate_manifest_and_weights(client, db, model, header):
    """RFC 9110 §13.1.2: ``*`` matches any current representation; the weak comparison used by
    If-None-Match treats ``W/"x"`` as ``"x"``. Pins the ``*`` and ``W/`` handling."""
    store = client.app.state.store
    _publish(db, store, model, 1)
    h = client.auth("serving")
    for url in ("/v1/models/srv/versions/1", "/v1/models/srv/versions/1/weights"):
        etag = client.get(url, headers=h).headers["etag"]
        r = client.get(url, headers={**h, "If-None-Match": header.format(etag=etag)})
        assert r.status_code == 304 and r.content == b"", (url, header)
        # a weak tag of another representation does not match
        assert client.get(url, headers={**h, "If-None-Match": 'W/"other"'}).status_code == 200
