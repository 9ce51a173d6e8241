"""GET /v1/subjects/{subject_id}: the deletion receipt, built from database state the test
writes directly (models, samples, versions with bounds, requests, tombstones)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import uuid
from datetime import datetime, timedelta

import pytest

from service.models import DeletionRequest, Model, ModelAlias, ModelVersion, Sample, SampleChunk, SubjectTombstone
from service.models._types import utcnow

LN2 = math.log(2)


def _key(client, subject: str) -> str:
    secret = client.app.state.settings.security.secret_key
    return hmac.new(secret.encode(), subject.encode(), hashlib.sha256).hexdigest()


def _model(db, name: str) -> Model:
    m = Model(name=name, architecture="mlp", architecture_config={}, input_shape=[2], num_classes=2, linearize="all", method_config={})
    db.add(m)
    db.flush()
    return m


def _version(db, m, n, kl, *, state="live", watermark=None, created_at=None, guarantee="certified") -> ModelVersion:
    bound = {} if kl == "missing" else {"kl_nats": kl, "kl_bits": kl / LN2 if isinstance(kl, float) else kl, "guarantee": guarantee}
    v = ModelVersion(model_id=m.id, number=n, sha256=hashlib.sha256(f"{m.name}{n}".encode()).hexdigest(), size_bytes=1,
                     bound=bound, metrics={}, state=state, sample_watermark=watermark, created_at=created_at or utcnow())
    db.add(v)
    db.flush()
    return v


def _alias(db, m, name, v) -> None:
    db.add(ModelAlias(model_id=m.id, name=name, version_id=v.id))
    db.flush()


def _samples(db, m, key, splits) -> list[Sample]:
    chunk = SampleChunk(model_id=m.id, uri="local://chunks/x", sha256="0" * 64, n_rows=len(splits))
    db.add(chunk)
    db.flush()
    out = []
    for row, split in enumerate(splits):
        s = Sample(model_id=m.id, subject_key=key, split=split, label=0, chunk_id=chunk.id, row=row)
        db.add(s)
        db.flush()
        out.append(s)
    return out


def _request(db, key, model, status, *, created_at, clean=None, held=None, removed=None, completed_at=None) -> DeletionRequest:
    r = DeletionRequest(id=uuid.uuid4(), subject_key=key, model_id=model.id if model else None, status=status,
                        created_at=created_at, due_at=created_at + timedelta(days=30), completed_at=completed_at,
                        samples_removed=removed, clean_version_id=clean.id if clean else None, held_versions=held, attempts=1)
    db.add(r)
    db.flush()
    return r


def _get(client, path, role="auditor"):
    r = client.get(path, headers=client.auth(role))
    assert r.status_code == 200, r.text
    return r.json()


def _dt(s: str) -> datetime:
    return datetime.fromisoformat(s)


def test_receipt_after_a_completed_deletion(client, db):
    alice, bob = _key(client, "alice-123"), _key(client, "bob-7")
    m, other = _model(db, "digits"), _model(db, "other")
    _version(db, m, 1, 1.25e-4, state="revoked", watermark=40)
    v2 = _version(db, m, 2, 2.5e-4, watermark=35)
    _version(db, m, 3, 0.0, watermark=None, guarantee="exact")  # a zeroed release: contributes 0
    v4 = _version(db, m, 4, 3.1e-4, watermark=35)
    _version(db, other, 1, 0.9)  # another model's bound never counts
    _alias(db, m, "latest", v4)
    _alias(db, m, "production", v2)
    _samples(db, m, bob, ["user", "user"])  # someone else's samples are not the subject's
    created = utcnow() - timedelta(days=3)
    done = utcnow() - timedelta(days=1)
    req = _request(db, alice, m, "completed", created_at=created, completed_at=done, clean=v2,
                   held=[{"model": "digits", "number": 1}], removed=7)
    db.add(SubjectTombstone(model_id=m.id, subject_key=alice, deleted_at=v2.created_at, request_id=req.id))
    db.flush()

    body = _get(client, "/v1/subjects/alice-123")
    assert body["subject_key"] == alice and body["subject_id"] == "alice-123"
    (r,) = body["requests"]
    assert r["id"] == str(req.id) and r["model"] == "digits" and r["status"] == "completed"
    assert r["samples_removed"] == 7 and r["clean_version"] == 2 and r["clean_version_model"] == "digits"
    assert r["held_versions"] == [{"model": "digits", "number": 1}]
    assert _dt(r["created_at"]) == created and _dt(r["completed_at"]) == done and _dt(r["due_at"]) == created + timedelta(days=30)

    (mr,) = body["models"]
    assert mr["model"] == "digits" and mr["samples_remaining"] == 0
    assert _dt(mr["tombstoned_since"]) == v2.created_at
    assert mr["held_by_versions"] == [1]
    assert mr["first_clean_version"]["number"] == 2 and mr["first_clean_version"]["state"] == "live"
    assert _dt(mr["first_clean_version"]["created_at"]) == v2.created_at
    assert (mr["latest_version"], mr["latest_is_clean"]) == (4, True)
    assert (mr["production_version"], mr["production_is_clean"]) == (2, True)
    expected = 2.5e-4 + 0.0 + 3.1e-4  # versions 2, 3, 4 (version 1 precedes the deletion)
    assert math.isclose(mr["cumulative_kl_nats"], expected, rel_tol=1e-12)
    assert math.isclose(mr["cumulative_kl_bits"], expected / LN2, rel_tol=1e-12)
    assert mr["releases_since_deletion"] == 3 and [x["number"] for x in mr["releases"]] == [2, 3, 4]
    assert [x["kl_nats"] for x in mr["releases"]] == [2.5e-4, 0.0, 3.1e-4] and mr["releases"][1]["guarantee"] == "exact"
    assert mr["unbounded_versions"] == []

    # the same subject through ?model=, and a model that never held it
    assert _get(client, "/v1/subjects/alice-123?model=digits")["models"] == body["models"]
    only_other = _get(client, "/v1/subjects/alice-123?model=other")
    assert only_other["models"] == [] and only_other["requests"] == []


def test_open_request_lists_the_live_versions_still_holding_the_subject(client, db):
    carol = _key(client, "carol")
    m = _model(db, "m")
    # an eval sample first (lower id): eval data is never fitted, so it must not count
    eval_s, user_s = _samples(db, m, carol, ["eval", "user"])
    v1 = _version(db, m, 1, 0.0, watermark=eval_s.id)  # fitted before carol's user sample
    v2 = _version(db, m, 2, 1e-4, watermark=user_s.id)  # fitted on it
    _version(db, m, 3, 1e-4, watermark=user_s.id + 100, state="revoked")  # not served any more
    _alias(db, m, "latest", v2)
    _alias(db, m, "production", v1)
    req = _request(db, carol, m, "queued", created_at=utcnow())

    body = _get(client, "/v1/subjects/carol")
    (r,) = body["requests"]
    assert r["id"] == str(req.id) and r["status"] == "queued" and r["clean_version"] is None and r["held_versions"] == []
    (mr,) = body["models"]
    assert mr["samples_remaining"] == 2 and mr["tombstoned_since"] is None
    assert mr["held_by_versions"] == [2]
    assert mr["first_clean_version"] is None
    assert (mr["latest_version"], mr["latest_is_clean"]) == (2, False)
    assert (mr["production_version"], mr["production_is_clean"]) == (1, True)
    assert mr["cumulative_kl_nats"] == 0 and mr["releases"] == [] and mr["releases_since_deletion"] == 0

    # a core sample is in every version's core network: every live version holds the subject
    _samples(db, m, carol, ["core"])
    mr = _get(client, "/v1/subjects/carol")["models"][0]
    assert mr["samples_remaining"] == 3 and mr["held_by_versions"] == [1, 2] and mr["production_is_clean"] is False


def test_request_for_every_model_and_an_unbounded_release(client, db):
    dave = _key(client, "dave")
    a, b = _model(db, "alpha"), _model(db, "beta")
    t0 = utcnow() - timedelta(hours=5)
    stone_a, stone_b = t0 + timedelta(hours=1), t0 + timedelta(hours=3)
    _version(db, a, 1, 1e-3, state="revoked", created_at=t0)
    _version(db, a, 2, 1.5e-4, created_at=stone_a)  # published in the tombstone's transaction
    a3 = _version(db, a, 3, 2e-4, created_at=stone_a + timedelta(minutes=30))
    _alias(db, a, "latest", a3)
    _version(db, b, 1, 0.0, created_at=t0)
    _version(db, b, 2, 1e-3, state="revoked", created_at=t0 + timedelta(hours=2))
    b3 = _version(db, b, 3, 5e-5, created_at=stone_b)
    b4 = _version(db, b, 4, "missing", created_at=stone_b + timedelta(minutes=5))
    _alias(db, b, "latest", b4)
    _alias(db, b, "production", b3)
    req = _request(db, dave, None, "completed", created_at=t0, completed_at=stone_b, clean=b3, removed=9,
                   held=[{"model": "alpha", "number": 1}, {"model": "beta", "number": 2}])
    db.add_all([SubjectTombstone(model_id=a.id, subject_key=dave, deleted_at=stone_a, request_id=req.id),
                SubjectTombstone(model_id=b.id, subject_key=dave, deleted_at=stone_b, request_id=req.id)])
    db.flush()

    body = _get(client, "/v1/subjects/dave")
    (r,) = body["requests"]
    assert r["model"] is None and r["clean_version"] == 3 and r["clean_version_model"] == "beta"
    ma, mb = body["models"]
    assert ma["model"] == "alpha" and ma["held_by_versions"] == [1] and ma["first_clean_version"]["number"] == 2
    assert math.isclose(ma["cumulative_kl_nats"], 1.5e-4 + 2e-4, rel_tol=1e-12) and ma["latest_is_clean"] is True
    assert ma["production_version"] is None and ma["production_is_clean"] is None
    assert mb["model"] == "beta" and mb["held_by_versions"] == [2] and mb["first_clean_version"]["number"] == 3
    assert mb["unbounded_versions"] == [4] and mb["cumulative_kl_nats"] is None and mb["cumulative_kl_bits"] is None
    assert [x["kl_nats"] for x in mb["releases"]] == [5e-5, None]

    only_a = _get(client, "/v1/subjects/dave?model=alpha")
    assert [m["model"] for m in only_a["models"]] == ["alpha"] and len(only_a["requests"]) == 1


def test_a_subject_deleted_twice_counts_from_the_latest_deletion(client, db):
    erin = _key(client, "erin")
    m = _model(db, "m")
    old = utcnow() - timedelta(days=10)
    v1 = _version(db, m, 1, 4e-4, created_at=old)
    v2 = _version(db, m, 2, 3e-4, created_at=old + timedelta(days=1))
    _version(db, m, 3, 2e-4, state="revoked", created_at=old + timedelta(days=5))  # after renewed consent
    v4 = _version(db, m, 4, 1e-4, created_at=old + timedelta(days=6))
    _alias(db, m, "latest", v4)
    _request(db, erin, m, "completed", created_at=old, completed_at=v2.created_at, clean=v2, held=[{"model": "m", "number": 1}], removed=1)
    _request(db, erin, m, "completed", created_at=old + timedelta(days=5), completed_at=v4.created_at, clean=v4,
             held=[{"model": "m", "number": 3}], removed=1)
    db.add(SubjectTombstone(model_id=m.id, subject_key=erin, deleted_at=v2.created_at))
    db.flush()
    assert v1.number == 1
    (mr,) = _get(client, "/v1/subjects/erin")["models"]
    assert mr["held_by_versions"] == [1, 3] and mr["first_clean_version"]["number"] == 4
    assert math.isclose(mr["cumulative_kl_nats"], 1e-4) and mr["releases_since_deletion"] == 1


def test_a_subject_never_seen_is_an_empty_receipt(client):
    body = _get(client, "/v1/subjects/nobody-at-all")
    assert body == {"subject_id": "nobody-at-all", "subject_key": _key(client, "nobody-at-all"), "requests": [], "models": []}


def test_roles_and_bad_input(client):
    assert client.get("/v1/subjects/x").status_code == 401
    for role in ("requester", "operator", "serving"):
        r = client.get("/v1/subjects/x", headers=client.auth(role))
        assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
    assert client.get("/v1/subjects/x", headers=client.auth("admin")).status_code == 200
    r = client.get("/v1/subjects/x?model=no-such-model", headers=client.auth("auditor"))
    assert r.status_code == 404 and r.json()["type"].endswith("/model-not-found")
    r = client.get("/v1/subjects/" + "a" * 257, headers=client.auth("auditor"))
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")


def test_the_raw_subject_id_stays_out_of_logs(client, caplog):
    from service.subject.router import redact_subject_ids

    with caplog.at_level(logging.DEBUG):
        _get(client, "/v1/subjects/zed-secret-id")
    server_side = [r.getMessage() for r in caplog.records if not r.name.startswith("httpx")]  # httpx: the test's own client
    assert caplog.records and not any("zed-secret-id" in msg for msg in server_side)
    # uvicorn's access log passes the path as an argument; the filter scrubs it
    access = logging.getLogger("uvicorn.access")
    record = access.makeRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:1", "GET", "/v1/subjects/zed-secret-id?model=m", "1.1", 200), None)
    assert access.filter(record)
    assert "zed-secret-id" not in record.getMessage() and "/v1/subjects/<redacted>?model=m" in record.getMessage()
    assert redact_subject_ids("/v1/deletion-requests?status=queued&subject_id=zed&limit=5") == \
        "/v1/deletion-requests?status=queued&subject_id=<redacted>&limit=5"


@pytest.mark.parametrize("subject", ["with space", "ünïcode-ñ", "a/b"])
def test_awkward_subject_ids_are_keyed_exactly(client, db, subject):
    m = _model(db, "m")
    _samples(db, m, _key(client, subject), ["user"])
    from urllib.parse import quote

    r = client.get("/v1/subjects/" + quote(subject, safe=""), headers=client.auth("auditor"))
    if "/" in subject:  # an encoded slash is still a path separator to the router
        assert r.status_code == 404
        return
    body = r.json()
    assert body["subject_key"] == _key(client, subject) and body["models"][0]["samples_remaining"] == 1
