"""Reading training samples out of the chunk store (one safetensors file per upload, tensor ``x``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load as st_load
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.storage import ArtifactStore
from service.models import Sample, SampleChunk


@dataclass
class SampleSet:
    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    subject_keys: list[str]

    def __len__(self) -> int:
        return len(self.y)

    def mask(self, keep: np.ndarray) -> "SampleSet":
        return SampleSet(self.x[keep], self.y[keep], self.ids[keep], [k for k, m in zip(self.subject_keys, keep, strict=True) if m])


def read_samples(
    session: Session,
    store: ArtifactStore,
    model_id: int,
    input_shape: list[int],
    *,
    splits: Iterable[str],
    exclude_subject_keys: Iterable[str] = (),
    only_subject_keys: Iterable[str] | None = None,
) -> SampleSet:
    q = (
        select(Sample.id, Sample.subject_key, Sample.label, Sample.row, SampleChunk.uri)
        .join(SampleChunk, SampleChunk.id == Sample.chunk_id)
        .where(Sample.model_id == model_id, Sample.split.in_(list(splits)))
        .order_by(Sample.id)
    )
    excl = list(exclude_subject_keys)
    if excl:
        q = q.where(Sample.subject_key.not_in(excl))
    if only_subject_keys is not None:
        q = q.where(Sample.subject_key.in_(list(only_subject_keys)))
    rows = session.execute(q).all()
    x = np.zeros((len(rows), *input_shape), dtype=np.float32)
    by_uri: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_uri.setdefault(r.uri, []).append(i)
    for uri, idx in by_uri.items():
        chunk = st_load(store.read_bytes(uri))["x"]
        x[idx] = chunk[[rows[i].row for i in idx]]
    return SampleSet(
        x=x,
        y=np.array([r.label for r in rows], dtype=np.int64),
        ids=np.array([r.id for r in rows], dtype=np.int64),
        subject_keys=[r.subject_key for r in rows],
    )
