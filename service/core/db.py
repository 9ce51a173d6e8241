"""Engine and session factory. The boundary (HTTP request, task) owns the transaction.

SQLite (embedded mode) runs in WAL mode, where readers never wait for the writer and the writer
never waits for readers. Two kinds of transaction follow from that:

* **reads** (``read_session``; every GET/HEAD request) begin ``DEFERRED``: they take a snapshot
  and no lock at all, so a busy writer never delays or fails them;
* **writes** (every other session) begin ``IMMEDIATE``: they take the single write lock at BEGIN
  and wait for it up to ``busy_timeout`` (other processes write too: the worker, the ticker, the
  CLI), instead of failing later on a read-to-write lock upgrade, which no timeout can retry.

Writes are short (no transaction spans a computation), so the wait is short. Deleted content is
overwritten (``secure_delete``), and :func:`scrub_deleted` checkpoints and truncates the WAL after
a transaction that erased raw subject ids, so no old page image of them stays in any file.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator

from fastapi import Request
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from service.core.config import DatabaseSettings

log = logging.getLogger("lethe.db")

# How long a SQLite writer waits for the write lock before giving up ("database is locked").
SQLITE_BUSY_TIMEOUT_S = 30.0
# The WAL truncation waits at most this long for readers; it is retried later when they stay.
SQLITE_CHECKPOINT_WAIT_MS = 2000
_READ = "lethe_read_only"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def make_engine(db: DatabaseSettings) -> Engine:
    url = db.url
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            echo=db.echo,
            hide_parameters=True,  # parameter values (raw subject ids) never in error messages or echo logs
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
            pool_size=db.pool_size,
            max_overflow=db.max_overflow,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            # Let SQLAlchemy not emit its own BEGIN (pysqlite legacy transaction control);
            # the "begin" listener below emits the right one.
            dbapi_connection.isolation_level = None
            cur = dbapi_connection.cursor()
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=FULL")
            # Deleted and overwritten content is zeroed in the page, not left in free space.
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ) else "BEGIN IMMEDIATE")

        return engine
    return create_engine(
        url,
        echo=db.echo,
        hide_parameters=True,
        pool_size=db.pool_size,
        max_overflow=db.max_overflow,
        pool_pre_ping=db.pool_pre_ping,
        pool_recycle=db.pool_recycle_s,
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


_readers: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()


def _reader(engine: Engine) -> Engine:
    eng = _readers.get(engine)
    if eng is None:
        eng = _readers[engine] = engine.execution_options(**{_READ: True})
    return eng


def read_session(factory: sessionmaker[Session]) -> Session:
    """A session for reading: on SQLite its transactions take no lock (``BEGIN DEFERRED``).

    It can still write, but a write after a read may fail on SQLite if another writer committed
    in between; use a plain ``factory()`` session for anything that writes."""
    session = factory()
    bind = session.bind
    if isinstance(bind, Engine) and bind.dialect.name == "sqlite":
        session.bind = _reader(bind)
    return session


def get_session(request: Request) -> Iterator[Session]:
    """One session per HTTP request, shared by the auth dependency and the handler;
    committed before the response is sent.

    Mounted with ``Depends(get_session, scope="function")`` so that the commit happens
    before FastAPI writes the response: a failed commit is a 500, never a silent 200.
    GET and HEAD requests get a read session (no lock on SQLite).
    """
    factory: sessionmaker[Session] = request.app.state.session_factory
    session = read_session(factory) if request.method in READ_METHODS else factory()
    with session:
        yield session
        session.commit()


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


# ----------------------------------------------------------------------------- erasure
# Database URLs (not engines: the embedded API and its worker each have one on the same file)
# with erased ids whose old page images may still be in the WAL.
_pending_scrub: set[str] = set()
_scrub_lock = threading.Lock()


def mark_erased(session: Session) -> None:
    """Note that this transaction erases raw subject ids; after it commits, the engine's
    old page images are scrubbed (:func:`scrub_deleted`)."""
    session.info["lethe_erased"] = True


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if not session.info.pop("lethe_erased", False):
        return
    bind = session.bind
    engine = bind if isinstance(bind, Engine) else getattr(bind, "engine", None)
    if engine is not None and is_sqlite(engine):
        _pending_scrub.add(str(engine.url))


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop("lethe_erased", None)


def scrub_pending(engine: Engine) -> bool:
    return str(engine.url) in _pending_scrub


def scrub_deleted(engine: Engine, *, force: bool = False) -> bool:
    """On SQLite: after erasing raw subject ids, copy every page back into the database file
    and truncate the WAL to zero bytes (``wal_checkpoint(TRUNCATE)``), so the old row images
    the WAL still holds are gone; ``secure_delete`` already zeroed them in the pages.
    Returns True when nothing is left to scrub. Waits for readers at most
    ``SQLITE_CHECKPOINT_WAIT_MS``; when they stay, the scrub stays pending and the next call
    (the sweeper's, the ticker's) retries it. A no-op on other databases."""
    if not is_sqlite(engine):
        return True
    key = str(engine.url)
    if not force and key not in _pending_scrub:
        return True
    with _scrub_lock:
        _pending_scrub.discard(key)
        busy = 1
        try:
            raw = engine.raw_connection()  # autocommit at the driver level: no BEGIN is emitted
            try:
                cur = raw.cursor()
                cur.execute(f"PRAGMA busy_timeout={SQLITE_CHECKPOINT_WAIT_MS}")
                try:
                    busy = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                finally:
                    cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
                    cur.close()
            finally:
                raw.close()
        except Exception:  # noqa: BLE001 - retried by the next call
            log.warning("WAL scrub failed; will retry", exc_info=True)
        if busy:
            _pending_scrub.add(key)
            return False
        return True


def vacuum_table(engine: Engine, table: str) -> None:
    """PostgreSQL: ``VACUUM`` a table (outside a transaction), so dead row versions that held
    erased values are pruned; WAL archives and backups keep them until they expire (a
    deployment matter, see the README). A no-op on SQLite (``secure_delete`` covers it)."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'VACUUM "{table}"'))
