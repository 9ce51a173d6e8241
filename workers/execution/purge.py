"""Purge after publish: rewrite sample chunks without the deleted rows, delete revoked files.

Entry point :func:`purge_model(rt, model_id) <purge_model>` (task ``pipeline.purge``, sent through
the outbox by the publish transaction; the sweeper re-sends it while :func:`needs_purge` says
something is left). Idempotent and safe to run concurrently (chunk rows are locked one at a time).

The rows are the model registry's (``service.model_registry.purge``); this module owns the
transactions and the files. A chunk is rewritten in its own short transaction. Files are deleted
only after the commit that stops referencing them, and only when no other row references the same
content-addressed file; a crash in between leaves an orphan that the sweeper deletes.
"""

from __future__ import annotations

from service.core.db import read_session
from service.model_registry import purge as registry_purge
from service.model_registry.purge import needs_purge  # noqa: F401  (the sweeper's question)
from workers.execution.common import touch
from workers.runtime import Runtime


def _delete_unreferenced(rt: Runtime, uris: list[str]) -> int:
    removed = 0
    with read_session(rt.session_factory) as session:
        for uri in dict.fromkeys(uris):
            if not registry_purge.is_referenced(session, uri) and rt.store.delete(uri):
                removed += 1
    return removed


def purge_model(rt: Runtime, model_id: int) -> dict:
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
    return {"chunks_rewritten": rewritten, "files_removed": _delete_unreferenced(rt, stale)}
