from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from workers.unlearning.methods.recipe import StandardConfig


class SvdProjectionConfig(StandardConfig):
    """Settings of ``svd_projection`` (DESIGN §14.3); the recipe (``train``, the ``retrain``
    fallback) and the accuracy / MIA gates are the ``standard`` family's. The forgotten classes
    must score at most ``max_forget_accuracy`` (they are not "unseen samples" of a known class, so
    the family's ``max_forget_gap`` does not apply)."""

    kinds: ClassVar[frozenset[str]] = frozenset({"class"})

    method: Literal["svd_projection"] = "svd_projection"
    alpha_r: float = Field(100.0, gt=0, description="α_r: scale of the retained classes' soft projector")
    alpha_f: float = Field(3.0, gt=0, description="α_f: scale of the forgotten classes' soft projector")
    grid_search: bool = Field(False, description="choose (α_r, α_f) from the grids on the retain/forget sample")
    alpha_r_grid: list[float] = Field([1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0], min_length=1, max_length=16)
    alpha_f_grid: list[float] = Field([1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0], min_length=1, max_length=16)
    retain_per_class: int = Field(100, ge=1, le=10_000, description="retain sample: this many per kept class")
    forget_per_class: int = Field(100, ge=1, le=10_000, description="forget sample: this many per forgotten class")
    max_patches: int = Field(10_000, ge=1, le=1_000_000, description="conv patches per layer and sample")
    projection_batch_size: int = Field(128, ge=2, le=65_536, description="inputs per forward pass of the projection (≥ 2: BatchNorm re-estimation)")
    max_forget_accuracy: float = Field(0.01, ge=0, le=1, description="gate: forget-class accuracy of the unmasked network")


CONFIG = SvdProjectionConfig
