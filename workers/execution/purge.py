"""Purge after publish: rewrite sample chunks without the deleted rows, delete revoked files.

Entry point :func:`purge_model(rt, model_id) <purge_model>` (task ``pipeline.purge``, sent through
the outbox by the publish transaction; the sweeper re-sends it while :func:`needs_purge` says
something is left). Idempotent and safe to run concurrently (chunk rows are locked one at a time).

The rows are the model registry's (``service.model_registry.purge``); this module owns the
transactions and the files. A chunk is rewritten in its own short transaction: the remaining rows' inputs go to a new
content-addressed chunk file, the rows are re-pointed, the old chunk row is deleted. Files are
deleted only after the commit that stops referencing them, only when no other row references
the same content-addressed file, and only when nobody wrote that file within
``storage.delete_grace_s`` (a concurrent identical write is never lost); a file skipped for that
reason, or left by a crash in between, is an orphan that the sweeper deletes later. Deleting
from an S3 bucket deletes every version of the object.
"""

from __future__ import annotations

from service.core.db import read_session
from service.model_registry import purge as registry_purge
from service.model_registry.purge import needs_purge  # noqa: F401  (the sweeper's question)
from workers.execution.common import touch
from workers.runtime import Runtime


def _delete_unreferenced(rt: Runtime, uris: list[str], grace_s: float) -> int:
    removed = 0
    with read_session(rt.session_factory) as session:
        for uri in dict.fromkeys(uris):
            if registry_purge.is_referenced(session, uri):
                continue
            idle = rt.store.idle_for(uri)
            if idle is not None and idle < grace_s:
                continue  # written recently: maybe by a job about to reference it; the sweeper decides later
            if rt.store.delete(uri):
                removed += 1
    return removed


def purge_model(rt: Runtime, model_id: int, *, grace_s: float | None = None) -> dict:
    grace_s = rt.settings.storage.delete_grace_s if grace_s is None else grace_s
    rewritten = 0
    stale: list[str] = []
    with read_session(rt.session_factory) as session:
        candidates = registry_purge.gap_chunks(session, model_id)
    for chunk_id in candidates:
        with rt.session_factory.begin() as session:
            old = registry_purge.rewrite_chunk(session, rt.store, model_id, chunk_id, lambda uri: touch(rt, uri))
        if old is not None:
            stale.append(old)
            rewritten += 1
    with rt.session_factory.begin() as session:
        stale += registry_purge.release_revoked_files(session, model_id)
    return {"chunks_rewritten": rewritten, "files_removed": _delete_unreferenced(rt, stale, grace_s)}
