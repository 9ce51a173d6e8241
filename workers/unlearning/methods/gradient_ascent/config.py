"""Settings of ``gradient_ascent`` (torch-free: the service validates registrations with it).

The ``standard`` family's recipe and gates (:class:`StandardConfig`), with the recipe pinned to
what the theory covers: full-batch gradient descent (one step per epoch), no momentum, no weight
decay, on the CPU in float64 (the dual coefficients are accumulated to float64 precision)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from workers.unlearning.methods.recipe import StandardConfig

# Settings of other optimisers and of uploaded weights, refused with the reason: the dual
# coefficients λ are exact only for Lethe's own full-batch gradient descent from a known start.
_UPLOADED = "uploaded weights carry no dual coefficients: gradient_ascent models are trained by Lethe"
_REFUSED = {
    "nesterov": "momentum changes the iterates, so Σ_t η·|ℓ'| is no longer each sample's dual coefficient",
    "l2": "an L2 term changes the stationary point the dual coefficients describe",
    "betas": "Adam rescales each coordinate, so Σ_t η·|ℓ'| is no longer each sample's dual coefficient",
    "checkpoint": _UPLOADED,
    "checkpoint_uri": _UPLOADED,
    "pretrained": _UPLOADED,
    "weights": _UPLOADED,
}
# recipe fields of the family that must keep their gradient-descent value here
_PINNED = {
    "momentum": (0, "momentum changes the iterates, so Σ_t η·|ℓ'| is no longer each sample's dual coefficient"),
    "weight_decay": (0, "weight decay changes the stationary point the dual coefficients describe"),
    "batch_size": (None, "gradient_ascent trains full-batch (one step per epoch over the whole set), as the theory assumes"),
}


class GradientAscentConfig(StandardConfig):
    """``gradient_ascent`` (Melamed, Yehudai, Vardi 2025; DESIGN §14.2): full-batch gradient descent
    on the mean logistic loss, then one scaled ascent step per forgotten sample. The gates are the
    family's measured ones (:func:`workers.unlearning.gates.check_measured_gates`), plus an optional
    bound on KKT stationarity."""

    kinds: ClassVar[frozenset[str]] = frozenset({"samples"})
    # the homogeneous, bias-free, scalar-output networks the theory covers (DESIGN §14.2)
    architectures: ClassVar[tuple[str, ...]] = ("linear", "two_layer_relu")
    checkpoint_refused: ClassVar[str | None] = _UPLOADED

    method: Literal["gradient_ascent"] = "gradient_ascent"
    optimizer: Literal["gd"] = Field("gd", description="full-batch gradient descent only (no momentum, weight decay or Adam)")
    lr: float = Field(1.0, gt=0, le=10, description="η: step size of gradient descent on the mean logistic loss")
    epochs: int = Field(1000, ge=1, le=10_000, description="full-batch gradient steps (one per epoch), in train and retrain")
    batch_size: None = Field(None, description="none: every step uses the whole set")
    momentum: float = Field(0.0, description="0 only (plain gradient descent)")
    weight_decay: float = Field(0.0, description="0 only (the logistic loss alone)")
    device: Literal["cpu"] = Field("cpu", description="float64 on the CPU (tiny homogeneous networks)")
    init_scale: float = Field(1e-3, ge=0, description="std of the hidden layer's initial weights (linear: always 0)")
    noise_std: float = Field(0.0, ge=0, description="std of Gaussian noise added to the served weights (none by default)")
    max_stationarity: float | None = Field(None, gt=0, description="KKT stationarity on D_r after the step (None: logged, not gated)")

    @model_validator(mode="before")
    @classmethod
    def _refuse_other_training(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, why in _REFUSED.items():
                if key in data:
                    raise ValueError(f"gradient_ascent does not take {key!r}: {why}")
            for key, (value, why) in _PINNED.items():
                if data.get(key, value) != value:
                    raise ValueError(f"gradient_ascent takes {key}={value}, not {data[key]!r}: {why}")
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
