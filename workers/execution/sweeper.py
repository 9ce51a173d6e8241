"""The sweeper (task ``pipeline.sweep``, beat every ``sweeper_interval_s``).

Entry point :func:`sweep(rt, orphan_grace_s=...) <sweep>`. One round:

* ``running`` jobs whose heartbeat is older than ``pipeline.heartbeat_timeout_s`` (the worker
  died or hangs) go back to ``queued`` and are re-sent through the outbox with the same task id;
  ``queued`` jobs whose last message was sent that long ago and never started (a lost message)
  are re-sent too. A job already at ``max_attempts`` ends ``failed`` instead, visibly, and its
  requests go back to the queue. The attempt counter is the fencing token: a worker that was
  only slow finds its attempt superseded and abandons its work.
* models with something left to purge get a ``pipeline.purge`` message (at most one per model
  per ``heartbeat_timeout_s``);
* weights, private weights, sample chunks and temp files that no row references and that were
  last written more than ``orphan_grace_s`` ago (default ``storage.delete_grace_s``) are deleted,
  every object version in a versioned bucket (a crash between writing a file and committing the
  row that names it leaves such files; so does a purge that found a file written too recently);
* sent outbox rows older than a day are deleted;
* erased raw subject ids leave no old row images behind: on PostgreSQL the requests table is
  vacuumed when requests reached a final status since the last round (completed rows keep the
  subject key only), on SQLite a pending WAL scrub is retried (``scrub_deleted``).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from service.core.db import read_session, scrub_deleted, vacuum_table
from service.job import outbox
from service.job import repository as job_repo
from service.job import service as job_service
from service.model_registry import purge as registry_purge
from service.deletion_request import service as requests_service
from service.models._types import utcnow
from workers.execution.common import PRIVATE_PREFIX, WEIGHTS_PREFIX
from workers.runtime import Runtime

ORPHAN_GRACE_S = 600.0  # the default of storage.delete_grace_s
OUTBOX_RETENTION = timedelta(days=1)
PURGE_TASK_PREFIX = "purge-sweep-"


def _schedule_purges(session, rt: Runtime, now, out: dict) -> None:
    recent = now - timedelta(seconds=rt.settings.pipeline.heartbeat_timeout_s)
    for model_id in registry_purge.model_ids(session):
        if not registry_purge.needs_purge(session, model_id):
            continue
        prefix = f"{PURGE_TASK_PREFIX}{model_id}-"
        if not outbox.enqueued_since(session, prefix, recent):
            job_service.enqueue_purge(session, model_id, task_id=f"{prefix}{int(time.time())}")
            out["purges"] += 1


def _referenced_uris(session) -> set[str]:
    refs = registry_purge.referenced_uris(session)
    # Files of jobs in flight (their checkpoints name them before any version does).
    for cp in job_repo.unfinished_checkpoints(session):
        _uris_in(cp, refs)
    return refs


def _uris_in(value, refs: set[str]) -> None:
    """Every ``...uri`` string anywhere in a checkpoint (private artifacts are nested by name)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str) and k.endswith("uri"):
                refs.add(v)
            else:
                _uris_in(v, refs)
    elif isinstance(value, list):
        for v in value:
            _uris_in(v, refs)


def _delete_orphans(rt: Runtime, refs: set[str], grace_s: float) -> int:
    cutoff = time.time() - grace_s
    removed = 0
    for prefix in (WEIGHTS_PREFIX, PRIVATE_PREFIX, "samples", "tmp"):
        for uri in rt.store.list_uris(prefix):
            if uri in refs:
                continue
            modified = rt.store.modified_at(uri)
            if modified is None or modified > cutoff:
                continue
            if rt.store.delete(uri):
                removed += 1
    return removed


def sweep(rt: Runtime, *, orphan_grace_s: float | None = None) -> dict:
    if orphan_grace_s is None:
        orphan_grace_s = rt.settings.storage.delete_grace_s
    now = utcnow()
    out = {"requeued": 0, "failed": 0, "purges": 0, "orphans": 0}
    with rt.session_factory.begin() as session:
        out.update(job_service.requeue_stale(session, rt.settings, now))
    with rt.session_factory.begin() as session:
        _schedule_purges(session, rt, now, out)
        outbox.delete_sent_before(session, now - OUTBOX_RETENTION)
    with read_session(rt.session_factory) as session:
        refs = _referenced_uris(session)
    out["orphans"] = _delete_orphans(rt, refs, orphan_grace_s)
    out["vacuumed"] = _vacuum_erased(rt)
    scrub_deleted(rt.engine)
    return out


_last_vacuum: dict[str, datetime] = {}


def _vacuum_erased(rt: Runtime) -> bool:
    """PostgreSQL: ``VACUUM deletion_requests`` once requests were closed (raw id cleared) since
    this process last did, so the dead row versions that still held raw ids are pruned."""
    if rt.engine.dialect.name != "postgresql":
        return False
    with read_session(rt.session_factory) as session:
        newest = requests_service.last_erased_at(session)
    key = str(rt.engine.url)
    if newest is None or (key in _last_vacuum and newest <= _last_vacuum[key]):
        return False
    vacuum_table(rt.engine, requests_service.TABLE)
    _last_vacuum[key] = newest
    return True
