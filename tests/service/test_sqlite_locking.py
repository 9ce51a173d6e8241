"""Embedded mode's SQLite rules (issue 10), in process: a read never waits for a writer, a cold
token (its lookup reads the database) never deadlocks its own request, a write that finds the
lock held past busy_timeout is a 503 (never a 500), and an erasing commit leaves the raw subject
id in no database file once the WAL is scrubbed."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.cli import embedded_settings
from service.core import db as core_db
from service.core import migrate
from service.core.db import scrub_deleted
from service.client.tokens import clear_token_cache, create_token
from service.main import create_app
from service.models import Role


@pytest.fixture
def embedded(tmp_path, monkeypatch) -> Iterator[tuple[TestClient, dict[str, str], object]]:
    monkeypatch.setattr(core_db, "SQLITE_BUSY_TIMEOUT_S", 0.5)  # a writer gives up after 0.5 s
    settings = embedded_settings(tmp_path / "data")
    migrate.upgrade(settings.database.url)
    clear_token_cache()
    app = create_app(settings)
    with TestClient(app) as client:
        with app.state.session_factory.begin() as session:
            tokens = {r: create_token(session, Role(r), f"t-{r}")[1] for r in ("admin", "requester", "serving")}
        clear_token_cache()  # every token starts cold
        yield client, tokens, tmp_path / "data" / "lethe.sqlite3"
    clear_token_cache()


def _hold_write_lock(path) -> sqlite3.Connection:
    other = sqlite3.connect(path, isolation_level=None, timeout=0.1)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO clients (name, created_at) VALUES ('held', '2026-01-01 00:00:00')")
    return other


def test_reads_with_cold_tokens_do_not_wait_for_a_writer_and_writes_get_503_not_500(embedded):
    client, tokens, path = embedded
    other = _hold_write_lock(path)  # another process is in the middle of a write
    try:
        for role, url in (("admin", "/v1/models"), ("serving", "/v1/models"), ("admin", "/v1/audit/verify"),
                          ("admin", "/v1/deletion-requests"), ("admin", "/metrics")):
            r = client.get(url, headers={"Authorization": f"Bearer {tokens[role]}"})
            # a read that asked for the write lock would wait out the 0.5 s busy timeout and be a 503
            assert r.status_code == 200, (url, r.text)
        t0 = time.perf_counter()
        r = client.post("/v1/deletion-requests", json={"subject_id": "s-1"},
                        headers={"Authorization": f"Bearer {tokens['requester']}"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["type"].endswith("/database-busy")
        assert time.perf_counter() - t0 >= 0.4  # it waited busy_timeout for the lock
    finally:
        other.execute("ROLLBACK")
        other.close()
    r = client.post("/v1/deletion-requests", json={"subject_id": "s-1"}, headers={"Authorization": f"Bearer {tokens['requester']}"})
    assert r.status_code == 202, r.text


def test_a_cold_token_in_a_write_request_does_not_deadlock_its_own_request(embedded):
    client, tokens, _ = embedded
    h = {"Authorization": f"Bearer {tokens['admin']}"}
    spec = {"name": "m", "architecture": "mlp", "architecture_config": {"in_features": 2, "hidden": [2], "num_classes": 2},
            "input_shape": [2], "num_classes": 2}
    assert client.post("/v1/models", json=spec, headers=h).status_code == 201
    clear_token_cache()
    rows = [{"subject_id": "u-1", "split": "user", "label": 0, "x": [0.0, 1.0]}]
    r = client.post("/v1/models/m/samples", json={"samples": rows}, headers=h)
    # a request waiting on its own second session's lock would give up after the 0.5 s busy
    # timeout with a 503 (no wall-clock bound here: a loaded machine is slow, not deadlocked)
    assert r.status_code == 201, r.text


def test_an_erasing_commit_leaves_no_raw_id_in_the_database_or_its_wal(embedded):
    client, tokens, path = embedded
    h = {"Authorization": f"Bearer {tokens['admin']}"}
    subject = "erase-me-7c1d9e"
    r = client.post("/v1/deletion-requests", json={"subject_id": subject}, headers=h)
    assert r.status_code == 202, r.text
    files = [path, path.with_name(path.name + "-wal")]
    assert any(subject.encode() in f.read_bytes() for f in files if f.exists())  # stored while open
    r = client.post(f"/v1/deletion-requests/{r.json()['id']}/cancel", headers=h)
    assert r.status_code == 200 and r.json()["subject_id"] is None
    assert scrub_deleted(client.app.state.engine) is True
    leftovers = [f.name for f in files if f.exists() and subject.encode() in f.read_bytes()]
    assert leftovers == []
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
