"""Purge after publish: rewrite sample chunks without the deleted rows, delete revoked weights.

Entry point :func:`purge_model(rt, model_id) <purge_model>` (task ``pipeline.purge``, sent through
the outbox by the publish transaction; the sweeper re-sends it while :func:`needs_purge` says
something is left). Idempotent and safe to run concurrently (chunk rows are locked one at a time).

A chunk is rewritten in its own short transaction: the remaining rows' inputs go to a new
content-addressed chunk file, the rows are re-pointed, the old chunk row is deleted. Files are
deleted only after the commit that stops referencing them, only when no other row references
the same content-addressed file, and only when nobody wrote that file within
``storage.delete_grace_s`` (a concurrent identical write is never lost); a file skipped for that
reason, or left by a crash in between, is an orphan that the sweeper deletes later. Deleting
from an S3 bucket deletes every version of the object.
"""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save as st_save
from sqlalchemy import func, select, update

from service.model_registry.samples import read_chunk_rows
from service.models import ModelVersion, Sample, SampleChunk, VersionState
from workers.execution.run import touch
from workers.runtime import Runtime


def _referenced(session, uri: str) -> bool:
    if session.execute(select(func.count()).select_from(SampleChunk).where(SampleChunk.uri == uri)).scalar_one():
        return True
    return bool(session.execute(
        select(func.count()).select_from(ModelVersion).where((ModelVersion.artifact_uri == uri) | (ModelVersion.private_uri == uri))
    ).scalar_one())


def _delete_unreferenced(rt: Runtime, uris: list[str], grace_s: float) -> int:
    removed = 0
    with rt.session_factory() as session:
        for uri in dict.fromkeys(uris):
            if _referenced(session, uri):
                continue
            idle = rt.store.idle_for(uri)
            if idle is not None and idle < grace_s:
                continue  # written recently: maybe by a job about to reference it; the sweeper decides later
            if rt.store.delete(uri):
                removed += 1
    return removed


def _gap_chunks(session, model_id: int) -> list[int]:
    """Chunks with more rows in the file than samples pointing into it."""
    live = select(func.count()).where(Sample.chunk_id == SampleChunk.id).scalar_subquery()
    return list(session.execute(
        select(SampleChunk.id).where(SampleChunk.model_id == model_id, SampleChunk.n_rows != live).order_by(SampleChunk.id)
    ).scalars())


def _revoked_with_files(session, model_id: int):
    return select(ModelVersion).where(
        ModelVersion.model_id == model_id,
        ModelVersion.state == VersionState.revoked.value,
        (ModelVersion.artifact_uri.is_not(None)) | (ModelVersion.private_uri.is_not(None)),
    )


def purge_model(rt: Runtime, model_id: int, *, grace_s: float | None = None) -> dict:
    grace_s = rt.settings.storage.delete_grace_s if grace_s is None else grace_s
    rewritten = 0
    stale: list[str] = []
    with rt.session_factory() as session:
        candidates = _gap_chunks(session, model_id)
    for chunk_id in candidates:
        with rt.session_factory.begin() as session:
            chunk = session.execute(select(SampleChunk).where(SampleChunk.id == chunk_id).with_for_update(skip_locked=True)).scalar_one_or_none()
            if chunk is None:
                continue  # gone, or another purge is on it
            rows = session.execute(select(Sample.id, Sample.row).where(Sample.chunk_id == chunk.id).order_by(Sample.row)).all()
            if len(rows) == chunk.n_rows:
                continue
            if rows:
                keep = np.array([r.row for r in rows], dtype=np.int64)
                x = read_chunk_rows(rt.store, chunk, keep)
                art = rt.store.put_bytes(st_save({"x": x}), prefix=f"samples/{model_id}", suffix=".safetensors")
                touch(rt, art.uri)
                new = SampleChunk(model_id=model_id, uri=art.uri, sha256=art.sha256, n_rows=len(rows))
                session.add(new)
                session.flush()
                session.execute(
                    update(Sample),
                    [{"id": r.id, "chunk_id": new.id, "row": i} for i, r in enumerate(rows)],
                )
            stale.append(chunk.uri)
            session.delete(chunk)
            rewritten += 1
    with rt.session_factory.begin() as session:
        for v in session.execute(_revoked_with_files(session, model_id).with_for_update(skip_locked=True)).scalars():
            stale += [u for u in (v.artifact_uri, v.private_uri) if u]
            v.artifact_uri = None
            v.private_uri = None
    return {"chunks_rewritten": rewritten, "files_removed": _delete_unreferenced(rt, stale, grace_s)}


def needs_purge(session, model_id: int) -> bool:
    if _gap_chunks(session, model_id):
        return True
    return session.execute(_revoked_with_files(session, model_id).limit(1)).first() is not None
