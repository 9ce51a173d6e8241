"""Settings of ``gradient_ascent`` (torch-free: the service validates registrations with it)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from workers.unlearning.methods import MethodConfig

# Settings of other optimisers and of uploaded weights, refused by name with the reason: the dual
# coefficients λ are exact only for Lethe's own full-batch gradient descent from a known start.
_REFUSED = {
    "momentum": "momentum changes the iterates, so Σ_t η·|ℓ'| is no longer each sample's dual coefficient",
    "nesterov": "momentum changes the iterates, so Σ_t η·|ℓ'| is no longer each sample's dual coefficient",
    "weight_decay": "weight decay changes the stationary point the dual coefficients describe",
    "l2": "an L2 term changes the stationary point the dual coefficients describe",
    "betas": "Adam rescales each coordinate, so Σ_t η·|ℓ'| is no longer each sample's dual coefficient",
    "checkpoint": "uploaded weights carry no dual coefficients: gradient_ascent models are trained by Lethe",
    "checkpoint_uri": "uploaded weights carry no dual coefficients: gradient_ascent models are trained by Lethe",
    "pretrained": "uploaded weights carry no dual coefficients: gradient_ascent models are trained by Lethe",
    "weights": "uploaded weights carry no dual coefficients: gradient_ascent models are trained by Lethe",
}


class GradientAscentConfig(MethodConfig):
    """``gradient_ascent`` (Melamed, Yehudai, Vardi 2025; DESIGN §14.2): full-batch gradient descent
    on the mean logistic loss, then one scaled ascent step per forgotten sample."""

    families: ClassVar[frozenset[str]] = frozenset({"standard"})
    kinds: ClassVar[frozenset[str]] = frozenset({"samples"})
    # the homogeneous, bias-free, scalar-output networks the theory covers (DESIGN §14.2)
    architectures: ClassVar[tuple[str, ...]] = ("linear", "two_layer_relu")

    method: Literal["gradient_ascent"] = "gradient_ascent"
    optimizer: Literal["gd"] = Field("gd", description="full-batch gradient descent only (no momentum, weight decay or Adam)")
    lr: float = Field(1.0, gt=0, description="η: step size of gradient descent on the mean logistic loss")
    steps: int = Field(2000, ge=1, description="full-batch gradient steps (train and retrain)")
    init_scale: float = Field(1e-3, ge=0, description="std of the hidden layer's initial weights (linear: always 0)")
    seed: int = 0
    noise_std: float = Field(0.0, ge=0, description="std of Gaussian noise added to the served weights (none by default)")
    # gates (measured; DESIGN §6.8): a forget release is published only if all hold, else retrain
    max_accuracy_drop: float = Field(0.05, ge=0, description="eval and retained accuracy may drop this much against the parent")
    max_mia_auc: float = Field(0.8, ge=0, le=1, description="membership-inference AUC, forgotten vs eval samples")
    max_forget_accuracy_gap: float = Field(0.25, ge=0, description="forget-set accuracy minus eval accuracy, at most")
    max_stationarity: float | None = Field(None, gt=0, description="KKT stationarity on D_r after the step (None: logged, not gated)")

    @model_validator(mode="before")
    @classmethod
    def _refuse_other_training(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, why in _REFUSED.items():
                if key in data:
                    raise ValueError(f"gradient_ascent does not take {key!r}: {why}")
        return data

    @classmethod
    def model_problems(cls, architecture: str, num_classes: int) -> list[tuple[str, str]]:
        out = []
        if architecture not in cls.architectures:
            out.append(("architecture", f"gradient_ascent serves bias-free homogeneous networks with a fixed output layer only "
                                        f"({', '.join(cls.architectures)}), not {architecture[:80]!r}"))
        if num_classes != 2:
            out.append(("num_classes", f"gradient_ascent needs binary labels (y ∈ {{±1}}): num_classes must be 2, got {num_classes}"))
        return out


CONFIG = GradientAscentConfig
