"""Reading training samples back out of the chunk store (numpy + safetensors only, no torch).

The chunk format is a contract between ingestion (:func:`service.model_registry.service.ingest`)
and the workers: one upload = one safetensors file in the artifact store holding a single tensor
``x`` of dtype float32 and shape ``(n, *input_shape)``; row ``i`` is the input of the sample row
whose ``Sample.row == i``. Labels, splits and subject keys live in SQL only.

:func:`read_samples` reads every chunk file it needs exactly once, checks it against the row
that names it (sha256, tensor name, dtype, shape, row range) and returns the inputs in sample-id
order, so two reads of the same rows give the same arrays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load as st_load
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.storage import ArtifactStore
from service.models import Model, Sample, SampleChunk

CHUNK_TENSOR = "x"
CHUNK_DTYPE = np.float32


class SampleChunkCorrupt(RuntimeError):
    """A chunk file is missing or does not match its ``sample_chunks`` row (a server-side fault)."""


@dataclass
class SampleSet:
    """Samples in sample-id order: ``x`` float32 ``(n, *input_shape)``, ``y`` int64 ``(n,)``,
    ``ids`` int64 ``(n,)`` (``None`` unless asked for) and the subject keys (never raw ids)."""

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray | None
    subject_keys: list[str]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def mask(self, keep: np.ndarray) -> SampleSet:
        keep = np.asarray(keep, dtype=bool)
        return SampleSet(
            self.x[keep],
            self.y[keep],
            None if self.ids is None else self.ids[keep],
            [k for k, m in zip(self.subject_keys, keep.tolist(), strict=True) if m],
        )


def _filtered(stmt, model_id: int, splits: Iterable[str], exclude_subject_keys: Iterable[str], only_subject_keys: Iterable[str] | None):
    stmt = stmt.where(Sample.model_id == model_id, Sample.split.in_(list(splits)))
    excl = list(exclude_subject_keys)
    if excl:
        stmt = stmt.where(Sample.subject_key.not_in(excl))
    if only_subject_keys is not None:
        stmt = stmt.where(Sample.subject_key.in_(list(only_subject_keys)))
    return stmt


def count_samples(
    session: Session,
    model_id: int,
    *,
    splits: Iterable[str],
    exclude_subject_keys: Iterable[str] = (),
    only_subject_keys: Iterable[str] | None = None,
) -> int:
    """How many rows :func:`read_samples` with the same filters would return (one SQL count)."""
    stmt = _filtered(select(func.count()).select_from(Sample), model_id, splits, exclude_subject_keys, only_subject_keys)
    return int(session.execute(stmt).scalar_one())


def read_samples(
    session: Session,
    store: ArtifactStore,
    model_id: int,
    *,
    splits: Iterable[str],
    exclude_subject_keys: Iterable[str] = (),
    include_ids: bool = False,
    only_subject_keys: Iterable[str] | None = None,
) -> SampleSet:
    """The samples of ``model_id`` in ``splits`` (minus ``exclude_subject_keys``; restricted to
    ``only_subject_keys`` when given), inputs loaded from the chunk store.

    Raises :class:`SampleChunkCorrupt` when a chunk file is missing or disagrees with its row.
    """
    shape = session.execute(select(Model.input_shape).where(Model.id == model_id)).scalar_one_or_none()
    if shape is None:
        raise LookupError(f"no model with id {model_id}")
    shape = tuple(int(d) for d in shape)
    stmt = _filtered(
        select(Sample.id, Sample.subject_key, Sample.label, Sample.row, Sample.chunk_id),
        model_id, splits, exclude_subject_keys, only_subject_keys,
    ).order_by(Sample.id)
    rows = session.execute(stmt).all()
    n = len(rows)
    x = np.empty((n, *shape), dtype=CHUNK_DTYPE)
    if n == 0:
        return SampleSet(x, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64) if include_ids else None, [])
    ids, keys, labels, row_in_chunk, chunk_ids = zip(*rows, strict=True)
    chunk_arr = np.asarray(chunk_ids, dtype=np.int64)
    row_arr = np.asarray(row_in_chunk, dtype=np.int64)
    chunks = {
        c.id: c
        for c in session.execute(select(SampleChunk).where(SampleChunk.id.in_(np.unique(chunk_arr).tolist()))).scalars()
    }
    order = np.argsort(chunk_arr, kind="stable")
    bounds = np.flatnonzero(np.diff(chunk_arr[order])) + 1
    for group in np.split(order, bounds):
        cid = int(chunk_arr[group[0]])
        data = _load_chunk(store, chunks.get(cid), cid, shape)
        wanted = row_arr[group]
        if wanted.min() < 0 or wanted.max() >= data.shape[0]:
            raise SampleChunkCorrupt(f"sample chunk {cid} has {data.shape[0]} rows; a sample points at row {int(wanted.max())}")
        x[group] = data[wanted]
    return SampleSet(
        x=x,
        y=np.asarray(labels, dtype=np.int64),
        ids=np.asarray(ids, dtype=np.int64) if include_ids else None,
        subject_keys=list(keys),
    )


def _load_chunk(store: ArtifactStore, chunk: SampleChunk | None, cid: int, shape: tuple[int, ...]) -> np.ndarray:
    if chunk is None:  # pragma: no cover - the foreign key makes this unreachable
        raise SampleChunkCorrupt(f"sample chunk {cid} has no row")
    try:
        raw = store.read_bytes(chunk.uri)
    except (FileNotFoundError, ValueError) as exc:
        raise SampleChunkCorrupt(f"sample chunk {cid} ({chunk.uri}) cannot be read: {exc}") from None
    if hashlib.sha256(raw).hexdigest() != chunk.sha256:
        raise SampleChunkCorrupt(f"sample chunk {cid} ({chunk.uri}) does not match its sha256")
    tensors = st_load(raw)
    data = tensors.get(CHUNK_TENSOR)
    if data is None or data.dtype != CHUNK_DTYPE or tuple(data.shape[1:]) != shape or data.shape[0] != chunk.n_rows:
        got = None if data is None else (str(data.dtype), list(data.shape))
        raise SampleChunkCorrupt(f"sample chunk {cid} holds {got}, expected float32 ({chunk.n_rows}, *{list(shape)})")
    return data


def encode_chunk(x: np.ndarray) -> bytes:
    """The bytes of a chunk file for the inputs ``x`` (stored as float32, C order)."""
    from safetensors.numpy import save

    return save({CHUNK_TENSOR: np.ascontiguousarray(x, dtype=CHUNK_DTYPE)})
