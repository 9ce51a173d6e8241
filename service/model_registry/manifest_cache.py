"""In-process cache of manifests and their ETags (DESIGN §9: ``latest`` manifest p99 ≤ 5 ms).

A manifest changes only when a version is published or revoked (both move an alias in the same
transaction), when an alias moves, or when an audit checkpoint is signed (the manifest carries the
latest one). Each of those calls :func:`changed` in its transaction. Invalidation reaches every API
process:

* **PostgreSQL** — :func:`changed` runs ``pg_notify`` in the writer's transaction (delivered at
  commit, never for a rollback); each API process keeps one listener thread on its own
  connection that empties the cache on every notification. While the listener is not connected
  (start, or a lost connection) the cache is bypassed, and it is emptied when it reconnects.
* **SQLite (embedded)** — jobs write from another process and cannot notify, so every lookup
  first reads ``PRAGMA data_version`` on a dedicated connection (a few µs): it changes whenever
  another connection commits, and any change empties the cache.

Within the process that wrote, an ``after_commit`` hook empties the cache at once (no waiting
for the notification). A reader that started before an invalidation never stores what it read
(:meth:`ManifestCache.token` / :meth:`ManifestCache.put`), so an entry is never older than the
last invalidation it could have seen.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import weakref

from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

log = logging.getLogger("lethe.manifests")

CHANNEL = "lethe_manifests"
_MAX_ENTRIES = 4096
_live: weakref.WeakSet["ManifestCache"] = weakref.WeakSet()


def changed(session: Session) -> None:
    """Call inside a transaction that changes what a manifest shows (alias, state, checkpoint)."""
    session.info["lethe_manifests_changed"] = True
    for cache in list(_live):  # early (readers sharing this transaction, e.g. tests); again at commit
        cache.invalidate()
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:c, '')"), {"c": CHANNEL})


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop("lethe_manifests_changed", False):
        for cache in list(_live):
            cache.invalidate()


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop("lethe_manifests_changed", None)


class ManifestCache:
    """``(model, ref) → (etag, body bytes)`` for the current generation of the database."""

    def __init__(self, engine: Engine, *, reconnect_s: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[str, bytes]] = {}
        self._gen = 0
        self._ready = False  # False: bypass (listener not connected)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sqlite: sqlite3.Connection | None = None
        self._data_version: int | None = None
        self._reconnect_s = reconnect_s
        dialect = engine.dialect.name
        if dialect == "postgresql":
            url = engine.url.set(drivername="postgresql")
            self._dsn = url.render_as_string(hide_password=False)
            self._thread = threading.Thread(target=self._listen, name="lethe-manifest-listener", daemon=True)
            self._thread.start()
        elif dialect == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            self._sqlite = sqlite3.connect(engine.url.database, check_same_thread=False, isolation_level=None)
            self._data_version = self._sqlite.execute("PRAGMA data_version").fetchone()[0]
            self._ready = True
        _live.add(self)

    # -- freshness -------------------------------------------------------------------------
    def invalidate(self) -> None:
        with self._lock:
            self._gen += 1
            self._entries.clear()

    def _check_sqlite(self) -> None:
        """Under the lock: empty the cache if another connection committed since the last look."""
        dv = self._sqlite.execute("PRAGMA data_version").fetchone()[0]
        if dv != self._data_version:
            self._data_version = dv
            self._gen += 1
            self._entries.clear()

    def token(self) -> int | None:
        """Take before reading the database; None when the cache is not usable now."""
        with self._lock:
            if not self._ready:
                return None
            if self._sqlite is not None:
                self._check_sqlite()
            return self._gen

    def get(self, name: str, ref: str) -> tuple[str, bytes] | None:
        with self._lock:
            if not self._ready:
                return None
            if self._sqlite is not None:
                self._check_sqlite()
            return self._entries.get((name, ref))

    def put(self, token: int | None, name: str, ref: str, etag: str, body: bytes) -> None:
        """Store what was read after :meth:`token` returned ``token`` — unless anything was
        invalidated since (the read may predate that change)."""
        if token is None:
            return
        with self._lock:
            if not self._ready or token != self._gen:
                return
            if self._sqlite is not None:
                self._check_sqlite()
                if token != self._gen:
                    return
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
            self._entries[(name, ref)] = (etag, body)

    # -- PostgreSQL listener --------------------------------------------------------------------
    def _listen(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    with self._lock:  # anything may have changed while we were not listening
                        self._gen += 1
                        self._entries.clear()
                        self._ready = True
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self.invalidate()
            except Exception as exc:  # noqa: BLE001 - keep listening; bypass the cache meanwhile
                log.warning("manifest cache listener lost its connection (%s); bypassing the cache", type(exc).__name__)
            finally:
                with self._lock:
                    self._ready = False
                    self._gen += 1
                    self._entries.clear()
            self._stop.wait(self._reconnect_s)

    @property
    def ready(self) -> bool:
        return self._ready

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        with self._lock:
            self._ready = False
            self._entries.clear()
        _live.discard(self)
