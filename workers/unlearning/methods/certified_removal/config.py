from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from workers.unlearning.methods import MethodConfig


class CertifiedRemovalConfig(MethodConfig):
    """Settings of ``certified_removal`` (Guo et al., ICML 2020; DESIGN §14.4). Torch-free: the
    service validates registrations against it (ε ≤ 0, δ ∉ (0, 1), s ≤ 0, λ ≤ 0 → 422).
    A model registered without them gets these documented defaults."""

    families: ClassVar[frozenset[str]] = frozenset({"linear_head"})
    kinds: ClassVar[frozenset[str]] = frozenset({"samples"})

    method: Literal["certified_removal"] = "certified_removal"
    epsilon: float = Field(1.0, gt=0, description="ε: the budget; a removal that would push ε_spent past it retrains the head instead")
    delta: float = Field(1e-4, gt=0, lt=1, description="δ of the (ε, δ) statement")
    noise_std: float = Field(1.0, gt=0, description="s: std of the secret objective perturbation b ~ N(0, s²I)")
    l2: float = Field(1e-2, gt=0, description="λ: the head minimises Σℓ + (λn/2)‖w‖² + bᵀw")
    loss: Literal["logistic", "least_squares"] = Field("logistic", description="one-vs-rest heads; least squares removes exactly")
    max_newton_steps: int = Field(50, ge=1, description="training stops earlier, at float64 precision")
    device: Literal["auto", "cpu", "cuda"] = Field("cpu", description="where the extractor is trained on the core split; features and the head are float64 on CPU")
    core_epochs: int = Field(30, ge=0, description="the extractor: cross-entropy on the core split only (0: the architecture's initial weights)")
    core_lr: float = Field(1e-2, gt=0)
    core_batch_size: int = Field(128, ge=1)
    seed: int = 0
    max_accuracy_drop: float = Field(1.0, ge=0, le=1, description="gate: eval accuracy may drop at most this much per release")


CONFIG = CertifiedRemovalConfig
