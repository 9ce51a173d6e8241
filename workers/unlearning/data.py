"""Data sources streamed in chunks: memory grows with the chunk size, not with N."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from workers.unlearning.errors import InvalidDataError


def _as_tensor(a, dtype=None) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a if dtype is None else a.to(dtype)
    arr = np.asarray(a)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t if dtype is None else t.to(dtype)


class TensorSource:
    """(x, y) pairs over arrays or tensors, yielded ``chunk_size`` rows at a time.

    ``ids`` (optional, one int per row): the samples' stable ids. Kept with the Gram sums of a
    fitted set, they let a downdate refuse samples that are not in it or were already removed."""

    def __init__(self, x, y, chunk_size: int = 4096, ids=None) -> None:
        self.x = _as_tensor(x)
        self.y = _as_tensor(y, torch.long)
        if self.x.shape[0] != self.y.shape[0]:
            raise InvalidDataError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")
        if self.y.ndim != 1:
            raise InvalidDataError(f"labels must be 1-D, got shape {tuple(self.y.shape)}")
        if not torch.is_floating_point(self.x):
            self.x = self.x.float()
        if chunk_size < 1:
            raise InvalidDataError("chunk_size must be >= 1")
        self.chunk_size = int(chunk_size)
        self.ids = None if ids is None else _as_tensor(ids, torch.long).reshape(-1)
        if self.ids is not None and self.ids.shape[0] != self.x.shape[0]:
            raise InvalidDataError(f"x has {self.x.shape[0]} rows but ids has {self.ids.shape[0]}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), self.chunk_size):
            yield self.x[start : start + self.chunk_size], self.y[start : start + self.chunk_size]

    def subset(self, index) -> "TensorSource":
        idx = _as_tensor(index, torch.long)
        return TensorSource(self.x[idx], self.y[idx], self.chunk_size, None if self.ids is None else self.ids[idx])

    def validate(self, num_classes: int, input_shape: Sequence[int] | None = None) -> None:
        """Refuse NaN/Inf, labels outside ``[0, num_classes)`` and a wrong input shape."""
        if input_shape is not None and tuple(self.x.shape[1:]) != tuple(input_shape):
            raise InvalidDataError(f"inputs have shape {tuple(self.x.shape[1:])}, expected {tuple(input_shape)}")
        for start in range(0, len(self), self.chunk_size):
            xs = self.x[start : start + self.chunk_size]
            bad = ~torch.isfinite(xs.reshape(xs.shape[0], -1)).all(dim=1)
            if bool(bad.any()):
                row = start + int(bad.nonzero()[0, 0])
                raise InvalidDataError(f"input row {row} contains NaN or infinity")
        if len(self):
            lo, hi = int(self.y.min()), int(self.y.max())
            if lo < 0 or hi >= num_classes:
                raise InvalidDataError(f"labels must lie in [0, {num_classes}); found {lo}..{hi}")


class LazySource(TensorSource):
    """A :class:`TensorSource` whose labels and ids are known now and whose inputs are read on first
    use: ``load(positions)`` returns the inputs of those rows. A subset taken before that reads only
    its own rows, when it needs them; a forget from kept statistics, and an evaluation on kept
    features, never touch them."""

    def __init__(self, y, ids, load, chunk_size: int = 4096, positions=None) -> None:
        self.y = _as_tensor(y, torch.long).reshape(-1)
        self.ids = _as_tensor(ids, torch.long).reshape(-1)
        if self.ids.shape[0] != self.y.shape[0]:
            raise InvalidDataError(f"y has {self.y.shape[0]} rows but ids has {self.ids.shape[0]}")
        if chunk_size < 1:
            raise InvalidDataError("chunk_size must be >= 1")
        self.chunk_size = int(chunk_size)
        self._load = load
        self._positions = np.arange(len(self.y)) if positions is None else np.asarray(positions, dtype=np.int64)
        self._x: torch.Tensor | None = None

    @property
    def x(self) -> torch.Tensor:  # type: ignore[override]
        if self._x is None:
            x = _as_tensor(self._load(self._positions))
            if x.shape[0] != self.y.shape[0]:
                raise InvalidDataError(f"read {x.shape[0]} input rows for {self.y.shape[0]} samples")
            self._x = x if torch.is_floating_point(x) else x.float()
        return self._x

    @property
    def loaded(self) -> bool:
        return self._x is not None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index) -> TensorSource:
        if self._x is not None:
            return super().subset(index)
        idx = _as_tensor(index, torch.long).reshape(-1)
        return LazySource(self.y[idx], self.ids[idx], self._load, self.chunk_size, self._positions[idx.numpy()])


def concat(*sources: TensorSource, chunk_size: int | None = None) -> TensorSource:
    xs = [s.x for s in sources]
    ys = [s.y for s in sources]
    ids = torch.cat([s.ids for s in sources]) if all(s.ids is not None for s in sources) else None
    return TensorSource(torch.cat(xs), torch.cat(ys), chunk_size or sources[0].chunk_size, ids)
