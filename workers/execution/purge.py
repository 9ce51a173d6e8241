"""Purge after publish: rewrite sample chunks without deleted rows, delete revoked weights.

Idempotent; the sweeper re-runs it until nothing is left to purge.
"""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from sqlalchemy import delete, func, select, update

from service.models import ModelVersion, Sample, SampleChunk, VersionState
from workers.runtime import Runtime


def _uri_in_use(session, uri: str) -> bool:
    return bool(session.execute(select(func.count()).select_from(SampleChunk).where(SampleChunk.uri == uri)).scalar_one())


def purge_model(rt: Runtime, model_id: int) -> dict:
    rewritten = removed_files = 0
    with rt.session_factory.begin() as session:
        chunks = session.execute(select(SampleChunk).where(SampleChunk.model_id == model_id).with_for_update()).scalars().all()
        for chunk in chunks:
            rows = session.execute(select(Sample.id, Sample.row).where(Sample.chunk_id == chunk.id).order_by(Sample.row)).all()
            if len(rows) == chunk.n_rows:
                continue
            old_uri = chunk.uri
            if rows:
                x = st_load(rt.store.read_bytes(old_uri))["x"]
                keep = np.array([r.row for r in rows])
                art = rt.store.put_bytes(st_save({"x": np.ascontiguousarray(x[keep])}), prefix=f"samples/{model_id}", suffix=".safetensors")
                new = SampleChunk(model_id=model_id, uri=art.uri, sha256=art.sha256, n_rows=len(rows))
                session.add(new)
                session.flush()
                for new_row, r in enumerate(rows):
                    session.execute(update(Sample).where(Sample.id == r.id).values(chunk_id=new.id, row=new_row))
            session.execute(delete(SampleChunk).where(SampleChunk.id == chunk.id))
            session.flush()
            if not _uri_in_use(session, old_uri) and rt.store.delete(old_uri):
                removed_files += 1
            rewritten += 1
        revoked = session.execute(
            select(ModelVersion).where(
                ModelVersion.model_id == model_id,
                ModelVersion.state == VersionState.revoked.value,
                (ModelVersion.artifact_uri.is_not(None)) | (ModelVersion.private_uri.is_not(None)),
            )
        ).scalars().all()
        live_uris = set(
            session.execute(select(ModelVersion.artifact_uri).where(ModelVersion.state == VersionState.live.value)).scalars()
        ) | set(session.execute(select(ModelVersion.private_uri).where(ModelVersion.state == VersionState.live.value)).scalars())
        for v in revoked:
            for uri in (v.artifact_uri, v.private_uri):
                if uri and uri not in live_uris and rt.store.delete(uri):
                    removed_files += 1
            v.artifact_uri = None
            v.private_uri = None
    return {"chunks_rewritten": rewritten, "files_removed": removed_files}


def needs_purge(session, model_id: int) -> bool:
    chunk_gap = session.execute(
        select(func.count()).select_from(SampleChunk).where(
            SampleChunk.model_id == model_id,
            SampleChunk.n_rows != select(func.count()).where(Sample.chunk_id == SampleChunk.id).scalar_subquery(),
        )
    ).scalar_one()
    revoked = session.execute(
        select(func.count()).select_from(ModelVersion).where(
            ModelVersion.model_id == model_id,
            ModelVersion.state == VersionState.revoked.value,
            (ModelVersion.artifact_uri.is_not(None)) | (ModelVersion.private_uri.is_not(None)),
        )
    ).scalar_one()
    return bool(chunk_gap or revoked)
