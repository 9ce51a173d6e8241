"""The model-registry side of the purge (DESIGN §7): sample chunks rewritten without deleted
rows, the files of revoked versions released, and which files rows still reference. The worker
(``workers.execution.purge`` / ``sweeper``) owns the transactions and deletes the files after
the commit that stops referencing them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from safetensors.numpy import save as st_save
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.core.storage import ArtifactStore
from service.model_registry.samples import read_chunk_rows
from service.models import Model, ModelVersion, Sample, SampleChunk, VersionArtifact, VersionState


def gap_chunks(session: Session, model_id: int) -> list[int]:
    """Chunks with more rows in the file than samples pointing into it."""
    live = select(func.count()).where(Sample.chunk_id == SampleChunk.id).scalar_subquery()
    return list(session.execute(
        select(SampleChunk.id).where(SampleChunk.model_id == model_id, SampleChunk.n_rows != live).order_by(SampleChunk.id)
    ).scalars())


def rewrite_chunk(session: Session, store: ArtifactStore, model_id: int, chunk_id: int, on_write: Callable[[str], None]) -> str | None:
    """Rewrite one chunk without its deleted rows (a new content-addressed file, rows re-pointed,
    the old chunk row deleted). Returns the old file's uri (to delete after the commit), or None
    when there was nothing to do (gone, locked by another purge, or no gap)."""
    chunk = session.execute(select(SampleChunk).where(SampleChunk.id == chunk_id).with_for_update(skip_locked=True)).scalar_one_or_none()
    if chunk is None:
        return None
    rows = session.execute(select(Sample.id, Sample.row).where(Sample.chunk_id == chunk.id).order_by(Sample.row)).all()
    if len(rows) == chunk.n_rows:
        return None
    if rows:
        keep = np.array([r.row for r in rows], dtype=np.int64)
        x = read_chunk_rows(store, chunk, keep)  # streamed: memory grows with the kept rows, not the file
        art = store.put_bytes(st_save({"x": np.ascontiguousarray(x)}), prefix=f"samples/{model_id}", suffix=".safetensors")
        on_write(art.uri)
        new = SampleChunk(model_id=model_id, uri=art.uri, sha256=art.sha256, n_rows=len(rows))
        session.add(new)
        session.flush()
        session.execute(update(Sample), [{"id": r.id, "chunk_id": new.id, "row": i} for i, r in enumerate(rows)])
    uri = chunk.uri
    session.delete(chunk)
    return uri


def _revoked_with_files(model_id: int):
    has_artifacts = select(VersionArtifact.version_id).where(VersionArtifact.version_id == ModelVersion.id).exists()
    return select(ModelVersion).where(
        ModelVersion.model_id == model_id,
        ModelVersion.state == VersionState.revoked.value,
        (ModelVersion.artifact_uri.is_not(None)) | (ModelVersion.private_uri.is_not(None)) | has_artifacts,
    )


def release_revoked_files(session: Session, model_id: int) -> list[str]:
    """Forget the files of revoked versions (served weights and every private artifact); returns
    their uris, to delete after the commit."""
    stale: list[str] = []
    for v in session.execute(_revoked_with_files(model_id).with_for_update(skip_locked=True)).scalars():
        stale += [u for u in (v.artifact_uri, v.private_uri) if u]
        arts = session.execute(select(VersionArtifact).where(VersionArtifact.version_id == v.id)).scalars().all()
        stale += [a.uri for a in arts]
        for a in arts:
            session.delete(a)
        v.artifact_uri = None
        v.private_uri = None
    return stale


def needs_purge(session: Session, model_id: int) -> bool:
    if gap_chunks(session, model_id):
        return True
    return session.execute(_revoked_with_files(model_id).limit(1)).first() is not None


def model_ids(session: Session) -> list[int]:
    return list(session.execute(select(Model.id)).scalars())


def is_referenced(session: Session, uri: str) -> bool:
    if session.execute(select(func.count()).select_from(SampleChunk).where(SampleChunk.uri == uri)).scalar_one():
        return True
    if session.execute(select(func.count()).select_from(VersionArtifact).where(VersionArtifact.uri == uri)).scalar_one():
        return True
    return bool(session.execute(
        select(func.count()).select_from(ModelVersion).where((ModelVersion.artifact_uri == uri) | (ModelVersion.private_uri == uri))
    ).scalar_one())


def referenced_uris(session: Session) -> set[str]:
    """Every file a row of this domain names (versions, their private artifacts, sample chunks)."""
    refs: set[str] = set()
    for a, p in session.execute(select(ModelVersion.artifact_uri, ModelVersion.private_uri)):
        refs.update(u for u in (a, p) if u)
    refs.update(session.execute(select(SampleChunk.uri)).scalars())
    refs.update(session.execute(select(VersionArtifact.uri)).scalars())
    return refs
