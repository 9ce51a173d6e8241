"""The portable intake path (SAVEPOINT + read the winner), as embedded mode runs it on SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from service.core.errors import ModelNotFound
from service.deletion_request import service
from service.deletion_request.schemas import DeletionRequestCreate
from service.models import Base, DeletionRequest, Model

SECRET = "p" * 40


@pytest.fixture
def sqlite_session():
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Model(name="m1", architecture="mlp", architecture_config={}, input_shape=[4], num_classes=2,
                          linearize="all", method_config={}, auto_approve=False, sla_days=5))  # fmt: skip
        session.flush()
        yield session
    engine.dispose()


def _rows(session) -> int:
    return session.scalar(select(func.count()).select_from(DeletionRequest))


def test_portable_path_creates_replays_merges_and_refuses(sqlite_session):
    s = sqlite_session

    def create(subject, key=None, model="m1", reason=None):
        data = DeletionRequestCreate(subject_id=subject, model=model, reason=reason)
        return service.create_request(s, secret=SECRET, data=data, idempotency_key=key)

    first = create("zoe", key="k1")
    assert first.outcome == "created" and first.request.status == "awaiting_approval"
    assert (first.request.due_at - first.request.created_at).days == 5
    assert create("zoe", key="k1").outcome == "replayed"
    merged = create("zoe", key="k2")
    assert merged.outcome == "merged" and merged.request.id == first.request.id
    with pytest.raises(service.IdempotencyKeyReused):
        create("zoe", key="k1", reason="different")
    with pytest.raises(ModelNotFound):
        create("yan", model="unknown")
    assert _rows(s) == 1
    everywhere = create("zoe", model=None)
    assert everywhere.outcome == "created" and everywhere.request.model is None
    assert _rows(s) == 2


def test_portable_path_marks_a_class_subjects_request_as_a_class_request(sqlite_session):
    """Embedded mode decides the kind with one query (PostgreSQL does it inside the intake statement)."""
    from service.core.security import subject_key
    from service.models import ClassSubject

    s = sqlite_session
    model_id = s.scalar(select(Model.id).where(Model.name == "m1"))
    s.add(ClassSubject(model_id=model_id, label=1, subject_key=subject_key(SECRET, "alice")))
    s.flush()

    def kind(subject, model):
        data = DeletionRequestCreate(subject_id=subject, model=model)
        return service.create_request(s, secret=SECRET, data=data).request.kind

    assert kind("alice", "m1") == "class" and kind("alice", None) == "class" and kind("bob", "m1") == "samples"
    assert sorted(s.scalars(select(DeletionRequest.kind))) == ["class", "class", "samples"]
