"""Per-process resources of a worker: settings, engine, session factory, artifact store."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.core.config import Settings, get_settings
from service.core.db import make_engine, make_session_factory
from service.core.storage import ArtifactStore, StorageUnavailable, make_store

log = logging.getLogger("lethe.worker")


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    store: ArtifactStore

    @classmethod
    def from_settings(cls, settings: Settings) -> "Runtime":
        from service.audit import keys as audit_keys

        audit_keys.configure(settings.audit)  # the keys that link events and sign checkpoints
        engine = make_engine(settings.database)
        store = make_store(settings.storage)
        try:
            store.check()
        except StorageUnavailable as exc:  # said clearly now; each job that needs it fails with the reason
            log.error("artifact store unavailable: %s", exc)
        return cls(settings, engine, make_session_factory(engine), store)


_lock = threading.Lock()
_runtimes: dict[int, Runtime] = {}


def runtime_for(app) -> Runtime:
    settings = getattr(app, "lethe_settings", None) or get_settings()
    key = id(settings)
    with _lock:
        rt = _runtimes.get(key)
        if rt is None:
            rt = _runtimes[key] = Runtime.from_settings(settings)
        return rt
