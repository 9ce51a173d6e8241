"""The service stack of the benchmarks that drive it over HTTP: a fresh PostgreSQL database built by
the migrations, an admin token, and real uvicorn + Celery worker + beat (the integration tests'
process helpers, ``tests/integration/procs.py``)."""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))
import procs  # noqa: E402

from service.core import migrate  # noqa: E402
from service.core.config import DatabaseSettings  # noqa: E402
from service.core.db import make_engine, make_session_factory  # noqa: E402
from service.client.tokens import create_token  # noqa: E402
from service.models import Role  # noqa: E402


def start(db: str, **env: str) -> tuple[str, str, list[procs.Proc]]:
    """(base URL, admin token, running processes) on database ``db`` (dropped and rebuilt);
    ``env`` adds settings. The caller kills the processes."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')
    migrate.upgrade(url)
    engine = make_engine(DatabaseSettings(url=url))
    with make_session_factory(engine).begin() as s:
        _, token = create_token(s, Role.admin, "bench")
    engine.dispose()
    procs.flush_redis()
    tmp = Path(tempfile.mkdtemp(prefix=f"{db}-"))
    port = procs.free_port()
    base = f"http://127.0.0.1:{port}"
    settings = procs.env_for(url, tmp / "artifacts", **env)
    running = [procs.api(settings, tmp, port).start(), procs.worker(settings, tmp).start(), procs.beat(settings, tmp).start()]
    try:
        procs.wait_http(base)
    except BaseException:
        for p in running:
            p.kill()
        raise
    return base, token, running


def npz(x, y, subjects, split) -> bytes:
    """A sample upload (``application/x-npz``)."""
    buf = io.BytesIO()
    np.savez(buf, x=x, labels=y, subject_ids=np.array(subjects), split=np.array(split))
    return buf.getvalue()
