from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from workers.unlearning.methods import MethodConfig


class MixedLinearConfig(MethodConfig):
    """Settings of the ``mixed_linear`` method. ``method`` doubles as the registry key."""

    families: ClassVar[frozenset[str]] = frozenset({"mixed_linear"})
    kinds: ClassVar[frozenset[str]] = frozenset({"samples"})

    method: Literal["mixed_linear"] = "mixed_linear"
    l2: float = Field(1e-3, gt=0, description="μ: L2 regularisation of the user weights")
    target_scale: float = Field(1.0, gt=0, description="κ: targets are κ·onehot(y)")
    noise_std: float = Field(3e-4, ge=0, description="s: std of the release noise on the user weights")
    tol: float = Field(1e-9, gt=0, description="stop when ‖∇L(w)‖ ≤ tol (absolute)")
    max_iter: int = Field(2000, ge=1, description="CG iterations, in total over Newton steps")
    max_newton_steps: int = Field(4, ge=1)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where new models are built (build_model)")
    dtype: Literal["auto", "float64", "float32", "mixed"] = Field(
        "auto", description="precision of the network and the user weights. float64: everything (the certificate is exact); mixed: the "
        "frozen prefix (feature extraction) in float32, the linearised head, the user weights, the Gram sums, the Newton step, the "
        "gradient/residual and the bound in float64 (certifies; the GPU setting); float32: everything in float32 (the gradient at "
        "float32 user weights floors near 1e-7, so the bound misses max_kl_per_release and the job falls back to zero + retrain); "
        "auto = float64 on CPU, mixed on CUDA. CG scalars and reductions are always float64",
    )
    pass_dtype: Literal["float64", "float32"] = Field(
        "float64", description="dtype of CG's Hessian-vector products on the explicit path (a head of Linear layers and activations, "
        "e.g. linearize='all' on an MLP): float32 runs them with float64 sums, reliable float64 residual updates and a float64 "
        "gradient, so the bound stays sound; cheaper per iteration, but ill-conditioned sets need more iterations. No effect on an "
        "affine head (Cholesky) or on the generic path",
    )
    precondition: bool = Field(False, description="Jacobi-precondition CG (explicit path only; the benchmark found it slower on MLPs)")
    cache_bytes: int = Field(512 * 2**20, ge=0, description="cache per-chunk head inputs/activations up to this size, else stream")
    core_epochs: int = Field(30, ge=0)
    core_lr: float = Field(1e-2, gt=0)
    core_batch_size: int = Field(128, ge=1)
    max_kl_per_release: float = Field(1e-3, ge=0)
    max_accuracy_drop: float = Field(0.01, ge=0)
    seed: int = 0


CONFIG = MixedLinearConfig
