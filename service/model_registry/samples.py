"""Reading training samples back out of the chunk store (numpy + safetensors only, no torch).

The chunk format is a contract between ingestion (:func:`service.model_registry.service.ingest`)
and the workers: one upload = one safetensors file in the artifact store holding a single tensor
``x`` of dtype float32 and shape ``(n, *input_shape)``; row ``i`` is the input of the sample row
whose ``Sample.row == i``. Labels, splits and subject keys live in SQL only.

:func:`read_samples` reads every chunk file it needs exactly once, checks it against the row
that names it (sha256, tensor name, dtype, shape, row range) and returns the inputs in sample-id
order, so two reads of the same rows give the same arrays. A chunk is streamed (ranged GETs on
S3, buffered reads locally) in blocks of about 1 MiB: the wanted rows are copied straight into
the output and the whole file is hashed on the way, so memory does not grow with the chunk size.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.storage import ArtifactCorrupt, ArtifactStore
from service.models import Model, Sample, SampleChunk

CHUNK_TENSOR = "x"
CHUNK_DTYPE = np.float32
ID_BATCH = 10_000  # sample ids per lookup query of read_inputs


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
    inputs: bool = True,
) -> SampleSet:
    """The samples of ``model_id`` in ``splits`` (minus ``exclude_subject_keys``; restricted to
    ``only_subject_keys`` when given), inputs loaded from the chunk store. ``inputs=False``: ids,
    labels and subject keys only (one SQL query, no file read; ``x`` has no rows): read the inputs
    later with :func:`read_inputs` by sample id.

    Raises :class:`SampleChunkCorrupt` when a chunk file is missing or disagrees with its row.
    """
    shape = _input_shape(session, model_id)
    stmt = _filtered(
        select(Sample.id, Sample.subject_key, Sample.label, Sample.row, Sample.chunk_id),
        model_id, splits, exclude_subject_keys, only_subject_keys,
    ).order_by(Sample.id)
    rows = session.execute(stmt).all()
    n = len(rows)
    if n == 0:
        return SampleSet(np.empty((0, *shape), dtype=CHUNK_DTYPE), np.empty(0, dtype=np.int64),
                         np.empty(0, dtype=np.int64) if include_ids or not inputs else None, [])
    ids, keys, labels, row_in_chunk, chunk_ids = zip(*rows, strict=True)
    x = _load(session, store, np.asarray(chunk_ids, dtype=np.int64), np.asarray(row_in_chunk, dtype=np.int64), shape) if inputs \
        else np.empty((0, *shape), dtype=CHUNK_DTYPE)
    return SampleSet(
        x=x,
        y=np.asarray(labels, dtype=np.int64),
        ids=np.asarray(ids, dtype=np.int64) if include_ids or not inputs else None,
        subject_keys=list(keys),
    )


def read_inputs(session: Session, store: ArtifactStore, model_id: int, ids: np.ndarray) -> np.ndarray:
    """The inputs of the samples ``ids`` of ``model_id``, in the order asked. Rows are looked up by
    sample id now (the purge may have moved them to a rewritten chunk since the ids were read);
    a sample that no longer exists raises :class:`SampleChunkCorrupt`."""
    shape = _input_shape(session, model_id)
    ids = np.asarray(ids, dtype=np.int64)
    if not len(ids):
        return np.empty((0, *shape), dtype=CHUNK_DTYPE)
    where: dict[int, tuple[int, int]] = {}
    wanted = np.unique(ids).tolist()
    for start in range(0, len(wanted), ID_BATCH):  # bounded IN lists (SQLite caps bound parameters)
        stmt = select(Sample.id, Sample.chunk_id, Sample.row).where(Sample.model_id == model_id, Sample.id.in_(wanted[start : start + ID_BATCH]))
        where.update((int(i), (c, r)) for i, c, r in session.execute(stmt).all())
    missing = [int(i) for i in ids if int(i) not in where]
    if missing:
        raise SampleChunkCorrupt(f"{len(missing)} sample(s) of model {model_id} no longer exist (e.g. id {missing[0]})")
    chunk_arr = np.asarray([where[int(i)][0] for i in ids], dtype=np.int64)
    row_arr = np.asarray([where[int(i)][1] for i in ids], dtype=np.int64)
    return _load(session, store, chunk_arr, row_arr, shape)


def _input_shape(session: Session, model_id: int) -> tuple[int, ...]:
    shape = session.execute(select(Model.input_shape).where(Model.id == model_id)).scalar_one_or_none()
    if shape is None:
        raise LookupError(f"no model with id {model_id}")
    return tuple(int(d) for d in shape)


def _load(session: Session, store: ArtifactStore, chunk_arr: np.ndarray, row_arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Rows ``row_arr[i]`` of chunks ``chunk_arr[i]``, each chunk file streamed once."""
    x = np.empty((len(chunk_arr), *shape), dtype=CHUNK_DTYPE)
    chunks = {
        c.id: c
        for c in session.execute(select(SampleChunk).where(SampleChunk.id.in_(np.unique(chunk_arr).tolist()))).scalars()
    }
    order = np.argsort(chunk_arr, kind="stable")
    bounds = np.flatnonzero(np.diff(chunk_arr[order])) + 1
    for group in np.split(order, bounds):
        cid = int(chunk_arr[group[0]])
        chunk = chunks.get(cid)
        if chunk is None:  # pragma: no cover - the foreign key makes this unreachable
            raise SampleChunkCorrupt(f"sample chunk {cid} has no row")
        _stream_rows(store, chunk, row_arr[group], x, group, shape)
    return x


def _stream_rows(store: ArtifactStore, chunk: SampleChunk, rows: np.ndarray, out: np.ndarray, out_idx: np.ndarray,
                 shape: tuple[int, ...] | None) -> None:
    """Copy rows ``rows`` of ``chunk`` into ``out[out_idx]``, streaming the file once and checking
    its sha256, tensor name, dtype, shape and row count on the way."""
    cid = chunk.id
    try:
        reader = store.open(chunk.uri, sha256=chunk.sha256)
    except (FileNotFoundError, ValueError) as exc:
        raise SampleChunkCorrupt(f"sample chunk {cid} ({chunk.uri}) cannot be read: {exc}") from None
    with reader:
        head = reader.read(8)
        if len(head) != 8:
            raise SampleChunkCorrupt(f"sample chunk {cid} ({chunk.uri}) is truncated")
        (n_header,) = struct.unpack("<Q", head)
        try:
            if n_header > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(reader.read(n_header))
            meta = header[CHUNK_TENSOR]
            dtype, tshape, (begin, end) = meta["dtype"], [int(d) for d in meta["shape"]], meta["data_offsets"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SampleChunkCorrupt(f"sample chunk {cid} ({chunk.uri}) has no readable tensor {CHUNK_TENSOR!r}: {exc}") from None
        if dtype != "F32" or (shape is not None and tuple(tshape[1:]) != shape) or not tshape or tshape[0] != chunk.n_rows:
            raise SampleChunkCorrupt(f"sample chunk {cid} holds {(dtype, tshape)}, expected F32 ({chunk.n_rows}, *{list(shape or ())})")
        n_rows = tshape[0]
        if len(rows) and (rows.min() < 0 or rows.max() >= n_rows):
            raise SampleChunkCorrupt(f"sample chunk {cid} has {n_rows} rows; a sample points at row {int(rows.max())}")
        row_bytes = int(np.prod(tshape[1:], dtype=np.int64)) * 4
        if end - begin != n_rows * row_bytes:
            raise SampleChunkCorrupt(f"sample chunk {cid} ({chunk.uri}) has inconsistent data offsets")
        reader.read(begin)  # padding between header and data, if any
        order = np.argsort(rows, kind="stable")
        srows, sidx = rows[order], out_idx[order]
        per_block = max(1, (1 << 20) // max(row_bytes, 1))
        pos = 0
        for first in range(0, n_rows, per_block):
            count = min(per_block, n_rows - first)
            raw = reader.read(count * row_bytes)
            if len(raw) != count * row_bytes:
                raise SampleChunkCorrupt(f"sample chunk {cid} ({chunk.uri}) is truncated")
            stop = int(np.searchsorted(srows, first + count, side="left"))
            if stop > pos:
                block = np.frombuffer(raw, dtype="<f4").reshape(count, *tshape[1:])
                out[sidx[pos:stop]] = block[srows[pos:stop] - first]
                pos = stop
        try:
            reader.verify()
        except ArtifactCorrupt:
            raise SampleChunkCorrupt(f"sample chunk {cid} ({chunk.uri}) does not match its sha256") from None


def read_chunk_rows(store: ArtifactStore, chunk: SampleChunk, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of one chunk (float32, in the order asked), streamed and verified."""
    rows = np.asarray(rows, dtype=np.int64)
    with store.open(chunk.uri, sha256=chunk.sha256) as r:
        head = r.read(8)
        (n_header,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
        try:
            tshape = json.loads(r.read(n_header))[CHUNK_TENSOR]["shape"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SampleChunkCorrupt(f"sample chunk {chunk.id} ({chunk.uri}) has no readable tensor: {exc}") from None
    out = np.empty((len(rows), *[int(d) for d in tshape[1:]]), dtype=CHUNK_DTYPE)
    _stream_rows(store, chunk, rows, out, np.arange(len(rows)), None)
    return out


def encode_chunk(x: np.ndarray) -> bytes:
    """The bytes of a chunk file for the inputs ``x`` (stored as float32, C order)."""
    from safetensors.numpy import save

    return save({CHUNK_TENSOR: np.ascontiguousarray(x, dtype=CHUNK_DTYPE)})
