"""People who are classes (issue 14, DESIGN §6.8 kind ``class``), the service side without a
worker: registering ``subjects_are_classes``, the label -> subject mapping upload (subject keys
only; every refusal a 4xx problem that writes nothing), the request kind at intake and in the
scheduler's batch, the ingest guards of a mapped class, and the label tombstone of a forgotten
class with its consent renewal. The forgetting itself (job, publish, tombstone written,
manifest, receipt) is end to end in tests/workers/pipeline/test_pipeline_class_subjects.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from registry_support import problem
from sqlalchemy import func, select

from service.core.security import subject_key
from service.job import service as job_service
from service.models import AuditEvent, ClassSubject, ClassTombstone, DeletionRequest, Model, Sample
from service.models._types import utcnow

D = 4
SVD = {"device": "cpu", "epochs": 1}
BASE = {"architecture": "mlp", "architecture_config": {"in_features": D, "hidden": [8], "num_classes": 5}, "input_shape": [D],
        "num_classes": 5, "method": "svd_projection", "family": "standard", "method_config": SVD}


def _register(client, name="faces", **over):
    r = client.post("/v1/models", json={**BASE, "name": name, "subjects_are_classes": True, **over}, headers=client.auth("admin"))
    assert r.status_code == 201, r.text
    return r.json()


def _rows(owner_of_label: dict[int, str], per=3, split="user"):
    return [{"subject_id": sid, "split": split, "label": label, "x": [float(label)] * D}
            for label, sid in owner_of_label.items() for _ in range(per)]


def _ingest(client, rows, name="faces", **body):
    return client.post(f"/v1/models/{name}/samples", json={"samples": rows, **body}, headers=client.auth("admin"))


def _map(client, pairs, name="faces", role="admin"):
    return client.post(f"/v1/models/{name}/class-subjects", json={"classes": [{"label": lbl, "subject_id": s} for lbl, s in pairs]},
                       headers=client.auth(role))


@pytest.fixture
def faces(client, db):
    """Model ``faces`` (5 classes): person-c owns every sample of class c for c in 0..3; class 4
    has no samples."""
    _register(client)
    assert _ingest(client, _rows({c: f"person-{c}" for c in range(4)})).status_code == 201
    assert _ingest(client, _rows({c: f"person-{c}" for c in range(4)}, per=1, split="eval")).status_code == 201
    return db.execute(select(Model).where(Model.name == "faces")).scalar_one()


def _state(db):
    return (db.scalar(select(func.count()).select_from(ClassSubject)), db.scalar(select(func.count()).select_from(ClassTombstone)),
            db.scalar(select(func.count()).select_from(Sample)), db.scalar(select(func.count()).select_from(AuditEvent)),
            db.scalar(select(func.count()).select_from(DeletionRequest)))


def test_registration_stores_the_flag_and_refuses_it_for_a_samples_method(client, db):
    body = _register(client)
    assert body["subjects_are_classes"] is True and body["classes_mapped"] == 0 and body["forgotten_classes"] == []
    assert db.execute(select(Model.subjects_are_classes).where(Model.name == "faces")).scalar_one() is True
    r = client.post("/v1/models", json={**BASE, "name": "plain"}, headers=client.auth("admin"))
    assert r.status_code == 201 and r.json()["subjects_are_classes"] is False
    r = client.post("/v1/models", json={**BASE, "name": "nope", "subjects_are_classes": True, "method": "lcodec",
                                        "method_config": {"device": "cpu", "epochs": 1}}, headers=client.auth("admin"))
    assert r.status_code == 422 and "subjects_are_classes" in r.text and "class" in r.text, r.text
    assert db.scalar(select(func.count()).select_from(Model).where(Model.name == "nope")) == 0


def test_the_mapping_is_stored_as_subject_keys_and_a_re_upload_is_idempotent(client, db, faces, settings):
    r = _map(client, [(0, "person-0"), (1, "person-1"), (2, "person-2")])
    assert r.status_code == 201, r.text
    assert r.json() == {"mapped": 3, "unchanged": 0, "classes_mapped": 3}
    rows = db.execute(select(ClassSubject.label, ClassSubject.subject_key).where(ClassSubject.model_id == faces.id)).all()
    secret = settings.security.secret_key
    assert sorted(rows) == [(c, subject_key(secret, f"person-{c}")) for c in range(3)]
    assert all("person" not in k for _, k in rows)  # keys, never the raw ids
    again = _map(client, [(0, "person-0"), (3, "person-3")])
    assert again.status_code == 201 and again.json() == {"mapped": 1, "unchanged": 1, "classes_mapped": 4}
    assert client.get("/v1/models/faces", headers=client.auth("operator")).json()["classes_mapped"] == 4
    ev = db.execute(select(AuditEvent).where(AuditEvent.kind == "class.subjects_mapped").order_by(AuditEvent.seq)).scalars().all()
    assert [e.payload["labels"] for e in ev] == [[0, 1, 2], [3]] and "person" not in str([e.payload for e in ev])


@pytest.mark.parametrize("pairs, status, kind, words", [
    ([(7, "person-0")], 422, "unknown-class-label", ("label 7", "outside [0, 5)")),
    ([(4, "person-0")], 422, "unknown-class-label", ("label 4", "no training")),
    ([(0, "person-0"), (0, "person-1")], 409, "class-mapping-conflict", ("label 0 appears twice",)),
    ([(0, "person-0"), (1, "person-0")], 409, "class-mapping-conflict", ("one subject is one class",)),
    ([(0, "person-1")], 409, "class-subject-mismatch", ("other subjects",)),
    ([(1, "person-1"), (2, "person-0")], 409, "class-subject-mismatch", ("label 2", "other subjects")),  # valid row first: all or nothing
])
def test_a_bad_mapping_is_a_problem_and_writes_nothing(client, db, faces, pairs, status, kind, words):
    before = _state(db)
    problem(_map(client, pairs), status, kind, *words)
    assert _state(db) == before


def test_a_mapping_conflicting_with_a_stored_one_writes_nothing(client, db, faces):
    assert _map(client, [(0, "person-0")]).status_code == 201
    before = _state(db)
    problem(_map(client, [(1, "person-1"), (0, "person-9")]), 409, "class-mapping-conflict", "label 0", "already mapped")
    problem(_map(client, [(1, "person-1"), (2, "person-0")]), 409, "class-mapping-conflict", "already mapped to label 0")
    assert _state(db) == before


def test_a_subject_holding_another_label_cannot_be_a_class(client, db, faces):
    assert _ingest(client, [{"subject_id": "person-3", "split": "user", "label": 1, "x": [0.0] * D}]).status_code == 201
    before = _state(db)
    problem(_map(client, [(3, "person-3")]), 409, "class-subject-mismatch", "other labels")
    assert _state(db) == before


def test_models_and_bodies_the_mapping_refuses(client, db, faces):
    _register(client, "plain", subjects_are_classes=False)
    assert _ingest(client, _rows({0: "a", 1: "b"}), name="plain").status_code == 201
    before = _state(db)
    problem(_map(client, [(0, "a")], name="plain"), 409, "subjects-not-classes", "subjects_are_classes")
    assert _map(client, [(0, "person-0")], name="nobody").status_code == 404
    assert _map(client, [(0, "person-0")], role="operator").status_code == 403
    for body in ({"classes": []}, {"classes": [{"label": 0}]}, {"classes": [{"label": -1, "subject_id": "x"}]},
                 {"classes": [{"label": 0, "subject_id": "bad\u200bid"}]}, {"classes": [{"label": "0", "subject_id": "x"}]},
                 {"classes": [{"label": 0, "subject_id": "x", "extra": 1}]}, {"mapping": {}}):
        r = client.post("/v1/models/faces/class-subjects", json=body, headers=client.auth("admin"))
        assert r.status_code == 422, (body, r.text)
    r = client.post("/v1/models/faces/class-subjects", content=b"{not json", headers={**client.auth("admin"), "content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert _state(db) == before


def test_a_request_for_a_mapped_subject_is_a_class_request_and_the_scheduler_batches_classes(client, db, faces, settings):
    assert _map(client, [(1, "person-1"), (2, "person-2")]).status_code == 201
    kinds = {}
    for sid, model in (("person-1", "faces"), ("person-2", "faces"), ("person-3", "faces"), ("person-1", None)):
        r = client.post("/v1/deletion-requests", json={"subject_id": sid, "model": model}, headers=client.auth("requester"))
        assert r.status_code == 202, r.text
        kinds[(sid, model)] = r.json()["kind"]
    assert kinds == {("person-1", "faces"): "class", ("person-2", "faces"): "class", ("person-3", "faces"): "samples",
                     ("person-1", None): "class"}
    rid = client.get("/v1/deletion-requests", params={"model": "faces"}, headers=client.auth("operator")).json()["items"]
    assert {i["kind"] for i in rid} == {"class", "samples"}
    jobs = job_service.schedule(db, settings, force_model_id=faces.id)
    assert len(jobs) == 1 and jobs[0].model_id == faces.id
    # the class requests go together; the sample request (person-3) never shares their batch
    assert jobs[0].config["classes"] == [1, 2] and len(jobs[0].config["request_ids"]) == 3
    left = [i for i in client.get("/v1/deletion-requests", params={"status": "queued"}, headers=client.auth("operator")).json()["items"]]
    assert [(i["kind"], i["model"]) for i in left] == [("samples", "faces")] and left[0]["error"] is None


def test_a_mapped_class_refuses_rows_that_would_break_it(client, db, faces):
    assert _map(client, [(1, "person-1")]).status_code == 201
    before = _state(db)
    problem(_ingest(client, [{"subject_id": "stranger", "split": "user", "label": 1, "x": [0.0] * D}]), 409,
             "class-subject-mismatch", "class 1")
    problem(_ingest(client, [{"subject_id": "person-1", "split": "eval", "label": 0, "x": [0.0] * D}]), 409,
             "class-subject-mismatch", "class 1")
    assert _state(db) == before
    assert _ingest(client, [{"subject_id": "person-1", "split": "eval", "label": 1, "x": [0.0] * D}]).status_code == 201


def test_a_forgotten_class_refuses_new_samples_until_its_subject_renews_consent(client, db, faces, settings):
    key = subject_key(settings.security.secret_key, "person-2")
    deleted = utcnow() - timedelta(hours=1)
    # what publish leaves after forgetting class 2 (tests/workers/pipeline/test_pipeline_class_subjects.py checks it does)
    db.query(Sample).filter(Sample.model_id == faces.id, Sample.label == 2).delete()
    db.add(ClassTombstone(model_id=faces.id, label=2, subject_key=key, deleted_at=deleted, version_number=2))
    db.flush()
    assert client.get("/v1/models/faces", headers=client.auth("operator")).json()["forgotten_classes"] == [2]
    row = [{"subject_id": "person-2", "split": "user", "label": 2, "x": [2.0] * D}]
    before = _state(db)
    body = problem(_ingest(client, [{"subject_id": "person-0", "split": "user", "label": 0, "x": [0.0] * D}] + row), 409,
                    "class-deleted", "class 2", "consent_renewed_at")
    assert body["row"] == 1 and body["label"] == 2
    problem(_ingest(client, row, consent_renewed_at=(deleted - timedelta(minutes=1)).isoformat()), 409, "class-deleted")
    stranger = [{"subject_id": "stranger", "split": "user", "label": 2, "x": [2.0] * D}]
    problem(_ingest(client, row + stranger, consent_renewed_at=utcnow().isoformat()), 409, "class-deleted")  # the class's subject only
    assert _state(db) == before
    ok = _ingest(client, row, consent_renewed_at=(utcnow() - timedelta(seconds=1)).isoformat())
    assert ok.status_code == 201, ok.text
    assert db.scalar(select(func.count()).select_from(ClassTombstone)) == 0
    assert db.execute(select(ClassSubject.label).where(ClassSubject.subject_key == key)).scalar_one() == 2  # the class is its person again
    renewed = db.execute(select(AuditEvent).where(AuditEvent.kind == "class.consent_renewed")).scalar_one()
    assert renewed.payload["label"] == 2 and renewed.subject_key == key
    read = client.get("/v1/models/faces", headers=client.auth("operator")).json()
    assert read["forgotten_classes"] == [] and read["classes_mapped"] == 1


def test_a_class_an_active_job_forgets_refuses_new_samples_of_it(client, db, faces):
    """Publish deletes every remaining sample of a forgotten class (``classes.forget_classes``):
    a row of the class accepted while its job runs would be deleted with no request and no
    receipt of its subject. The upload is refused instead (409, nothing written); other labels
    are not concerned."""
    r = client.post("/v1/models/faces/classes/1/forget", json={"reason": "asked"}, headers=client.auth("operator"))
    assert r.status_code == 202, r.text
    before = _state(db)
    stranger = [{"subject_id": "stranger", "split": "user", "label": 1, "x": [1.0] * D}]
    body = problem(_ingest(client, stranger), 409, "class-being-forgotten", "class 1")
    assert body["label"] == 1 and body["job_id"] == r.json()["id"]
    assert _state(db) == before
    other = [{"subject_id": "stranger", "split": "user", "label": 0, "x": [0.0] * D}]
    assert _ingest(client, other).status_code == 201, "a label no job forgets is not refused"


def test_a_request_for_every_model_held_on_a_class_model_still_forgets_the_subject_elsewhere(client, db, settings):
    """A request covering every model whose subject is a class of model ``duo`` (held there:
    forgetting the class would leave one class) and holds samples of model ``plain`` too: the
    scheduler batches it for ``plain`` instead of picking ``duo`` (the lowest id) every tick,
    where it would stay held and ``plain`` would keep the subject's samples."""
    _register(client, "duo")
    assert _ingest(client, _rows({0: "person-0", 1: "person-1"}), name="duo").status_code == 201
    assert _map(client, [(0, "person-0"), (1, "person-1")], name="duo").status_code == 201
    _register(client, "plain", subjects_are_classes=False)
    assert _ingest(client, _rows({0: "person-0", 1: "other-1", 2: "other-2"}), name="plain").status_code == 201
    r = client.post("/v1/deletion-requests", json={"subject_id": "person-0", "model": None}, headers=client.auth("requester"))
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    later = utcnow() + timedelta(days=1)
    ids = {m.name: m.id for m in db.execute(select(Model)).scalars()}
    assert ids["duo"] < ids["plain"]
    first = job_service.schedule(db, settings, now=later)  # held on duo (the lowest id)
    req = db.get(DeletionRequest, __import__("uuid").UUID(r.json()["id"]))
    assert [j.model_id for j in first] == [] and req.error.startswith(job_service.HOLD_PREFIX)
    jobs = job_service.schedule(db, settings, now=later + timedelta(seconds=1))
    assert [j.model_id for j in jobs] == [ids["plain"]] and str(req.id) in jobs[0].config["request_ids"]
