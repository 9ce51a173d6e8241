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
