"""Two consent renewals of one forgotten class at once (review 2026-11-30, "not fixed"): both
used to lift the same label tombstone, and the second got a 500 (StaleDataError or a duplicate
``class_subjects`` row). Real commits on PostgreSQL, threads each on their own connection."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import delete, func, select

from service.core.security import subject_key
from service.models import AuditEvent, ClassSubject, ClassTombstone, Model, Sample
from service.models._types import utcnow

D = 4
BASE = {"architecture": "mlp", "architecture_config": {"in_features": D, "hidden": [8], "num_classes": 5}, "input_shape": [D],
        "num_classes": 5, "method": "svd_projection", "family": "standard", "method_config": {"device": "cpu", "epochs": 1},
        "subjects_are_classes": True, "name": "faces"}


def test_concurrent_consent_renewals_of_one_class_all_succeed_and_lift_it_once(committed_app, settings):
    app, admin = committed_app, committed_app.auth("admin")
    assert app.post("/v1/models", json=BASE, headers=admin).status_code == 201
    rows = [{"subject_id": f"person-{c}", "split": "user", "label": c, "x": [float(c)] * D} for c in range(3) for _ in range(2)]
    assert app.post("/v1/models/faces/samples", json={"samples": rows}, headers=admin).status_code == 201
    key = subject_key(settings.security.secret_key, "person-2")
    deleted = utcnow() - timedelta(hours=1)
    with app.app.state.session_factory.begin() as s:  # what publish leaves after forgetting class 2
        model_id = s.execute(select(Model.id)).scalar_one()
        s.execute(delete(Sample).where(Sample.label == 2))
        s.add(ClassTombstone(model_id=model_id, label=2, subject_key=key, deleted_at=deleted, version_number=2))
    row = [{"subject_id": "person-2", "split": "user", "label": 2, "x": [2.0] * D}]
    renewed = (utcnow() - timedelta(seconds=1)).isoformat()

    def renew(_i):
        return app.post("/v1/models/faces/samples", json={"samples": row, "consent_renewed_at": renewed}, headers=admin)

    for _round in range(3):  # a few rounds: the race needs both to read the tombstone before either commits
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(renew, range(6)))
        assert Counter(r.status_code for r in results) == {201: 6}, [r.text for r in results if r.status_code != 201]
        with app.app.state.session_factory() as s:
            assert s.scalar(select(func.count()).select_from(ClassTombstone)) == 0
            assert s.execute(select(ClassSubject.label).where(ClassSubject.subject_key == key)).scalars().all() == [2]
            assert s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == "class.consent_renewed")) == _round + 1
            # forget the class again for the next round
            s.execute(delete(Sample).where(Sample.label == 2))
            s.execute(delete(ClassSubject).where(ClassSubject.label == 2))
            s.add(ClassTombstone(model_id=model_id, label=2, subject_key=key, deleted_at=deleted, version_number=2))
            s.commit()
