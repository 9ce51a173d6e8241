"""The Azadkia–Chatterjee CODEC statistic and its forward stepwise selection (numpy only).

Azadkia & Chatterjee, "A simple measure of conditional dependence" (Ann. Statist. 2021), §2.
For a sample (Y_i, X_i, Z_i), i = 1..n, with R_i = #{j : Y_j ≤ Y_i} and L_i = #{j : Y_j ≥ Y_i}:

    T_n(Y; Z)     = Σ_i (n·min(R_i, R_{M(i)}) − L_i²) / Σ_i L_i (n − L_i)
    T_n(Y; Z | X) = Σ_i (min(R_i, R_{M(i)}) − min(R_i, R_{N(i)})) / Σ_i (R_i − min(R_i, R_{N(i)}))

where N(i) is the nearest neighbour of X_i and M(i) that of (X_i, Z_i) (unconditional: of Z_i)
among the other points, Euclidean, ties broken uniformly at random. T → 0 when Y is
(conditionally) independent of Z and → 1 when Y is a measurable function of Z (given X); it is
rank-based, so any monotone transform of Y leaves it unchanged. Columns are standardised first
(the paper's FOCI package does the same): the units' activations live on different scales.
"""

from __future__ import annotations

import numpy as np

# Above this many points the distance matrix is built in row blocks (memory O(block·n)).
_BLOCK = 1024


def _standardise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    sd = x.std(axis=0)
    sd[sd == 0] = 1.0  # a constant column carries no information; leave it at 0
    return (x - x.mean(axis=0)) / sd


def nearest_neighbour(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each row, the index of its nearest other row (ties broken uniformly at random)."""
    n = x.shape[0]
    sq = (x * x).sum(axis=1)
    out = np.empty(n, dtype=np.int64)
    for lo in range(0, n, _BLOCK):
        hi = min(lo + _BLOCK, n)
        d = sq[lo:hi, None] + sq[None, :] - 2.0 * x[lo:hi] @ x.T
        np.maximum(d, 0.0, out=d)
        d[np.arange(hi - lo), np.arange(lo, hi)] = np.inf
        # random tie-breaking: among the minima pick one at random (a random key per entry)
        best = d.min(axis=1, keepdims=True)
        tol = 1e-12 * np.maximum(best, 1.0)
        ties = d <= best + tol
        keys = np.where(ties, rng.random(d.shape), -1.0)
        out[lo:hi] = keys.argmax(axis=1)
    return out


def _ranks(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R_i = #{j: Y_j ≤ Y_i}, L_i = #{j: Y_j ≥ Y_i} (ties counted, as in the definition)."""
    s = np.sort(y)
    r = np.searchsorted(s, y, side="right").astype(np.float64)
    left = (len(y) - np.searchsorted(s, y, side="left")).astype(np.float64)
    return r, left


def codec(y: np.ndarray, z: np.ndarray, x: np.ndarray | None = None, *, seed: int = 0) -> float:
    """T_n(Y; Z | X), or T_n(Y; Z) when ``x`` is None. ``y``: (n,); ``z``, ``x``: (n,) or (n, d).

    Returns nan when the statistic is undefined (Y constant; or, conditionally, Y already a
    function of X so that the denominator is 0)."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    n = y.shape[0]
    if n < 2:
        raise ValueError("CODEC needs at least 2 samples")
    rng = np.random.default_rng(seed)
    r, left = _ranks(y)
    zs = _standardise(z)
    if zs.shape[0] != n:
        raise ValueError(f"y has {n} rows, z has {zs.shape[0]}")
    if x is None:
        m = nearest_neighbour(zs, rng)
        den = float((left * (n - left)).sum())
        if den == 0.0:
            return float("nan")
        return float((n * np.minimum(r, r[m]) - left**2).sum() / den)
    xs = _standardise(x)
    if xs.shape[0] != n:
        raise ValueError(f"y has {n} rows, x has {xs.shape[0]}")
    nx = nearest_neighbour(xs, rng)
    m = nearest_neighbour(np.hstack([xs, zs]), rng)
    base = np.minimum(r, r[nx])
    den = float((r - base).sum())
    if den == 0.0:
        return float("nan")
    return float((np.minimum(r, r[m]) - base).sum() / den)


def forward_select(y: np.ndarray, features: np.ndarray, *, max_selected: int | None = None, seed: int = 0) -> list[int]:
    """Forward stepwise selection (FOCI): repeatedly add the column j that most increases
    T_n(Y; X_{S ∪ {j}}), and stop when no column increases it (or at ``max_selected``).

    Comparing T_n(Y; X_{S∪{j}}) with T_n(Y; X_S) is the paper's stopping rule: both share the
    denominator, and T_n(Y; X_j | X_S) > 0 exactly when the numerator grows."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] != np.asarray(y).reshape(-1).shape[0]:
        raise ValueError("features must be (n, p) with one row per response")
    p = features.shape[1]
    limit = p if max_selected is None else min(p, max_selected)
    chosen: list[int] = []
    current = -np.inf
    while len(chosen) < limit:
        best, best_j = -np.inf, -1
        for j in range(p):
            if j in chosen:
                continue
            t = codec(y, features[:, chosen + [j]], seed=seed)
            if np.isfinite(t) and t > best:
                best, best_j = t, j
        if best_j < 0 or best <= current:
            break
        chosen.append(best_j)
        current = best
    return chosen
