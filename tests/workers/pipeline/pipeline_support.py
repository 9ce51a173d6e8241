"""Helpers for pipeline tests: a tiny model with samples in the real chunk store."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save as st_save
from sqlalchemy import insert

from service.core.security import subject_key
from service.models import DeletionRequest, Model, RequestStatus, Sample, SampleChunk
from service.models._types import utcnow

SECRET = "test-secret-key-that-is-long-enough-0123456789"


def make_data(n_subjects=30, per_subject=6, d=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, d)) * 2
    def draw(n):
        y = rng.integers(0, classes, size=n)
        return (means[y] + rng.normal(size=(n, d))).astype(np.float32), y.astype(np.int64)
    xc, yc = draw(90)
    xe, ye = draw(60)
    xu, yu = draw(n_subjects * per_subject)
    subjects = [f"subject-{i:03d}" for i in range(n_subjects) for _ in range(per_subject)]
    return {"core": (xc, yc), "eval": (xe, ye), "user": (xu, yu), "subjects": subjects, "d": d, "classes": classes}


def register_model(session, name="tiny", d=8, classes=3, **overrides) -> Model:
    m = Model(
        name=name, architecture="mlp", architecture_config={"in_features": d, "hidden": [8], "num_classes": classes},
        input_shape=[d], num_classes=classes, linearize="last:1",
        method_config={"l2": 1e-3, "noise_std": 1e-3, "tol": 1e-9, "core_epochs": 5, "device": "cpu", "max_kl_per_release": 1e-3,
                       "max_accuracy_drop": 0.5},
        batch_window_s=3600, batch_size=100, auto_approve=True, auto_promote=True, sla_days=30,
    )
    for k, v in overrides.items():
        setattr(m, k, v)
    session.add(m)
    session.flush()
    return m


def ingest(session, store, model: Model, x, y, subjects, split) -> None:
    art = store.put_bytes(st_save({"x": np.ascontiguousarray(x, dtype=np.float32)}), prefix=f"samples/{model.id}", suffix=".safetensors")
    chunk = SampleChunk(model_id=model.id, uri=art.uri, sha256=art.sha256, n_rows=len(y))
    session.add(chunk)
    session.flush()
    session.execute(insert(Sample), [
        {"model_id": model.id, "subject_key": subject_key(SECRET, s), "split": split, "label": int(l), "chunk_id": chunk.id, "row": i}
        for i, (l, s) in enumerate(zip(y, subjects, strict=True))
    ])


def load_all(session, store, model, data) -> None:
    ingest(session, store, model, *data["core"], [f"core-{i}" for i in range(len(data["core"][1]))], "core")
    ingest(session, store, model, *data["eval"], [f"eval-{i}" for i in range(len(data["eval"][1]))], "eval")
    ingest(session, store, model, *data["user"], data["subjects"], "user")


def file_request(session, model: Model | None, subject: str) -> DeletionRequest:
    from datetime import timedelta
    import uuid

    key = subject_key(SECRET, subject)
    now = utcnow()
    r = DeletionRequest(id=uuid.uuid4(), subject_id=subject, subject_key=key, model_id=model.id if model else None,
                        open_key=f"{key}:{model.id if model else '*'}", status=RequestStatus.queued.value,
                        created_at=now, due_at=now + timedelta(days=30), attempts=0)
    session.add(r)
    session.flush()
    return r
