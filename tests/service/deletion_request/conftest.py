"""Fixtures of the deletion-request tests: registering models without the registry API."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.security import subject_key
from service.main import create_app
from service.models import AuditEvent, DeletionRequest, Model


def _model(name: str, *, auto_approve: bool = True, sla_days: int = 30) -> Model:
    return Model(
        name=name,
        architecture="mlp",
        architecture_config={},
        input_shape=[64],
        num_classes=10,
        linearize="all",
        method_config={},
        auto_approve=auto_approve,
        sla_days=sla_days,
    )


@pytest.fixture
def make_model(db: Session) -> Callable[..., Model]:
    def make(name: str, *, auto_approve: bool = True, sla_days: int = 30) -> Model:
        row = _model(name, auto_approve=auto_approve, sla_days=sla_days)
        db.add(row)
        db.flush()
        return row

    return make


@pytest.fixture
def counts(db: Session) -> Callable[[], tuple[int, int]]:
    """(deletion requests, audit events) as seen by the test's transaction."""

    def count() -> tuple[int, int]:
        db.expire_all()
        return (
            db.scalar(select(func.count()).select_from(DeletionRequest)),
            db.scalar(select(func.count()).select_from(AuditEvent)),
        )

    return count


@pytest.fixture
def skey(settings) -> Callable[[str], str]:
    return lambda raw: subject_key(settings.security.secret_key, raw)


@pytest.fixture
def small_body_client(client, db: Session, settings) -> Iterator:
    """A client (same tokens, same rolled-back connection) on an app whose body limit is 256 bytes."""
    small = settings.model_copy(update={"api": settings.api.model_copy(update={"max_body_bytes": 256})})
    app = create_app(small)
    with type(client)(app) as c:
        app.state.session_factory = db.info["factory"]
        c.tokens = client.tokens
        yield c


def commit_model(app, name: str, *, auto_approve: bool = True, sla_days: int = 30) -> int:
    with app.state.session_factory.begin() as session:
        row = _model(name, auto_approve=auto_approve, sla_days=sla_days)
        session.add(row)
        session.flush()
        return row.id


@pytest.fixture
def committed_model() -> Callable[..., int]:
    return commit_model
