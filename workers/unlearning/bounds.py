"""The information bound of a release (DESIGN §6.5).

For w_pub = w' + s·ξ compared with retraining from scratch on D_r and adding the same noise:

    KL( N(w', s²I) ‖ N(w*_r, s²I) ) = ‖w' − w*_r‖² / (2 s²) ≤ ‖∇L_{D_r}(w')‖² / (2 μ² s²)   nats

because μ-strong convexity gives ‖w' − w*_r‖ ≤ ‖∇L_{D_r}(w')‖ / μ.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Bound:
    method: str
    guarantee: str  # "exact" | "certified" | "heuristic"
    residual_norm: float
    mu: float
    noise_std: float
    iterations: int
    kl_nats: float
    kl_bits: float
    # what a method reports beyond the KL figure (certified_removal: ε_spent, δ, the budget left;
    # gradient_ascent: its KKT figures under ``kkt``);
    # flattened into :meth:`to_dict`, so versions, audit events and receipts carry it
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def kl_nats(residual_norm: float, mu: float, noise_std: float) -> float:
    if residual_norm == 0.0:
        return 0.0
    if noise_std <= 0.0:
        return math.inf
    return residual_norm**2 / (2.0 * mu**2 * noise_std**2)


def information_bound(
    residual_norm: float,
    mu: float,
    noise_std: float,
    *,
    method: str = "mixed_linear",
    guarantee: str = "certified",
    iterations: int = 0,
) -> Bound:
    nats = kl_nats(residual_norm, mu, noise_std)
    return Bound(
        method=method,
        guarantee=guarantee,
        residual_norm=float(residual_norm),
        mu=float(mu),
        noise_std=float(noise_std),
        iterations=int(iterations),
        kl_nats=nats,
        kl_bits=nats / math.log(2) if math.isfinite(nats) else math.inf,
    )


ZERO_BOUND_METHOD = "zero"


def exact_bound(method: str, mu: float, noise_std: float, iterations: int = 0, residual_norm: float = 0.0) -> Bound:
    """A release that provably holds nothing of the forgotten data (zero, or a retrain whose
    user weights never saw it): KL 0 exactly. ``residual_norm`` is recorded for information
    only (a retrain's optimality gap is not information about removed data)."""
    return Bound(method, "exact", float(residual_norm), float(mu), float(noise_std), int(iterations), 0.0, 0.0)


def tol_for_kl(mu: float, noise_std: float, max_kl_nats: float) -> float:
    """The loosest gradient-norm tolerance whose bound meets ``max_kl_nats``:
    ‖∇L‖ ≤ μ·s·√(2·KL). (0 when s = 0: only an exact solution is covered.)"""
    return float(mu * noise_std * math.sqrt(2.0 * max_kl_nats))
