"""Assertions shared by the registration tests: a refusal is a 422 problem and writes nothing."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from service.models import AuditEvent, Job, Model, OutboxMessage


def nothing_written(db, client) -> None:
    assert db.execute(select(func.count()).select_from(Model)).scalar_one() == 0
    assert db.execute(select(func.count()).select_from(Job)).scalar_one() == 0
    assert db.execute(select(func.count()).select_from(OutboxMessage)).scalar_one() == 0
    assert db.execute(select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == "model.registered")).scalar_one() == 0
    root = Path(client.app.state.settings.storage.root)
    assert not root.exists() or not any(p.is_file() for p in root.rglob("*"))


def refused(r, kind: str, *words: str) -> dict:
    return problem(r, 422, kind, *words)


def problem(r, status: int, kind: str, *words: str) -> dict:
    """``r`` is a ``status`` problem of type ``kind`` whose detail names ``words``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"].endswith(kind), body
    for w in words:
        assert w in body["detail"], (w, body["detail"])
    return body
