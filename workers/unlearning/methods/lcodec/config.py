from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from workers.unlearning.methods.recipe import StandardConfig


class LCodecConfig(StandardConfig):
    """Settings of ``lcodec`` (DESIGN §14.1). σ = (γ/ε)·√(2 ln(1.25/δ)), γ = 2·M·L²·m²/(λ³·n²)."""

    kinds: ClassVar[frozenset[str]] = frozenset({"samples"})

    method: Literal["lcodec"] = "lcodec"
    perturbations: int = Field(64, ge=8, le=4096, description="P: perturbed copies of the forgotten batch (CODEC's sample size)")
    max_candidate_units: int = Field(64, ge=1, le=100_000, description="units with the largest unconditional T(loss; a_j) that enter the stepwise search")
    max_selected_units: int = Field(32, ge=1, le=100_000, description="cap on the Markov blanket's size")
    damping: float = Field(1.0, gt=0, le=1e6, description="λ: (H_{r,S} + λI)⁻¹, and the strong convexity in σ")
    hessian_lipschitz: float = Field(1.0, gt=0, description="M in σ")
    gradient_lipschitz: float = Field(1.0, gt=0, description="L in σ")
    epsilon: float = Field(1.0, gt=0, description="ε in σ")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ in σ")
    cg_tol: float = Field(1e-6, gt=0, lt=1, description="CG stops at ‖r‖ ≤ cg_tol·‖b‖")
    cg_max_iter: int = Field(200, ge=1, le=100_000)
    max_damping_increases: int = Field(6, ge=0, le=30, description="negative curvature met: λ ×10 and CG restarts, at most this often")


CONFIG = LCodecConfig
