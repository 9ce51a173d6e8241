"""Engine and session factory. The boundary (HTTP request, task) owns the transaction."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from service.core.config import DatabaseSettings


def make_engine(db: DatabaseSettings) -> Engine:
    url = db.url
    if url.startswith("sqlite"):
        engine = create_engine(url, echo=db.echo, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # pragma: no cover - exercised in embedded mode
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # pragma: no cover - exercised in embedded mode
            # Take the write lock at BEGIN so concurrent transactions serialise cleanly
            # instead of failing on lock upgrade.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        # Let SQLAlchemy not emit its own BEGIN (pysqlite legacy transaction control).
        @event.listens_for(engine, "connect")
        def _sqlite_autocommit_off(dbapi_connection, _record):  # pragma: no cover
            dbapi_connection.isolation_level = None

        return engine
    return create_engine(
        url,
        echo=db.echo,
        pool_size=db.pool_size,
        max_overflow=db.max_overflow,
        pool_pre_ping=True,
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per HTTP request; committed before the response is sent.

    Mounted with ``Depends(get_session, scope="function")`` so that the commit happens
    before FastAPI writes the response: a failed commit is a 500, never a silent 200.
    """
    factory: sessionmaker[Session] = request.app.state.session_factory
    with factory.begin() as session:
        yield session


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
