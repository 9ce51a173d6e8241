"""Shared fixtures: a real PostgreSQL database built by the migrations, real Redis.

* ``engine``: a session-wide database ``lethe_test`` dropped and rebuilt by ``alembic upgrade``.
* ``db``: a connection in a transaction that is rolled back after the test; the app's session
  factory binds to it with savepoints, so the code under test may "commit" freely.
* ``client``: a TestClient on that rolled-back connection, with one token per role.
* ``committed_app``: the app on the real engine (real commits, real concurrency); tables are
  truncated afterwards. Use it for concurrency and restart tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from service.core import migrate
from service.core.config import Settings
from service.client.tokens import clear_token_cache, create_token
from service.main import create_app
from service.models import Base, Role

PG_ADMIN = os.environ.get("LETHE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
# One database per test run, so concurrent runs on one machine never drop each other's tables.
TEST_DB = os.environ.get("LETHE_TEST_DB", f"lethe_test_{os.getpid()}")
TEST_DB_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{TEST_DB}"
TEST_REDIS_URL = os.environ.get("LETHE_TEST_REDIS", "redis://127.0.0.1:6379/15")


def _recreate_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    _recreate_database(TEST_DB)
    migrate.upgrade(TEST_DB_URL)
    yield TEST_DB_URL
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_engine(database_url, pool_size=20, max_overflow=40)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator["s3_support.S3Server"]:
    """A real S3-compatible server (moto's standalone server) on loopback for the session; boto3
    finds its credentials in the environment (the standard chain), as in production."""
    import s3_support

    saved = {k: os.environ.get(k) for k in s3_support.AWS_ENV}
    os.environ.update(s3_support.AWS_ENV)
    server = s3_support.start_server(tmp_path_factory.mktemp("s3") / "moto.log")
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_storage(s3_server) -> dict:
    """Storage settings of a fresh VERSIONED bucket on the session's S3 server (no grace period)."""
    bucket = s3_server.new_bucket(versioned=True)
    return {"backend": "s3", "bucket": bucket, "prefix": "lethe", "endpoint_url": s3_server.endpoint,
            "region": "us-east-1", "addressing_style": "path", "delete_grace_s": 0}


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        environment="test",
        database={"url": database_url},
        broker={"url": TEST_REDIS_URL},
        storage={"root": tmp_path / "artifacts"},
        security={"secret_key": "test-secret-key-that-is-long-enough-0123456789"},
    )


@pytest.fixture
def db(engine: Engine) -> Iterator[Session]:
    """A session on a connection whose outer transaction is rolled back after the test."""
    conn = engine.connect()
    outer = conn.begin()
    factory = sessionmaker(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    session = factory()
    session.info["factory"] = factory
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        conn.close()
        clear_token_cache()


def _tokens(session: Session) -> dict[str, str]:
    out = {}
    for role in Role:
        _, token = create_token(session, role, name=f"test-{role.value}")
        out[role.value] = token
    session.flush()
    return out


class ApiClient(TestClient):
    """A TestClient that knows one token per role: ``client.as_role("operator").post(...)``."""

    tokens: dict[str, str]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
def client(db: Session, settings: Settings) -> Iterator[ApiClient]:
    app = create_app(settings)
    tokens = _tokens(db)
    with ApiClient(app) as c:
        # Rebind the app to the test's rolled-back connection.
        app.state.session_factory = db.info["factory"]
        c.tokens = tokens
        yield c


def truncate_all(engine: Engine) -> None:
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture
def clean_tables(engine: Engine) -> Iterator[Engine]:
    """For tests whose code commits for real: every table emptied before and after."""
    truncate_all(engine)
    yield engine
    truncate_all(engine)


@pytest.fixture
def committed_app(engine: Engine, settings: Settings) -> Iterator[ApiClient]:
    """The app on the real engine: real commits and concurrency. Tables truncated afterwards."""
    truncate_all(engine)
    app = create_app(settings)
    with ApiClient(app) as c:
        with app.state.session_factory.begin() as session:
            c.tokens = _tokens(session)
        yield c
    truncate_all(engine)
    clear_token_cache()
