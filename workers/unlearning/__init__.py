"""Lethe's forgetting library: mixed-linear models, exact Newton forgetting, release noise and
the information bound (DESIGN §6). It imports nothing of the service: usable on its own.

    from workers.unlearning import MixedLinearModel, TensorSource, get_method

    model = MixedLinearModel.build("mlp", {"in_features": 64, "hidden": [128], "num_classes": 10}, linearize="last:1")
    method = get_method("mixed_linear")
    cfg = method.config_cls(l2=1e-3, noise_std=1e-3)
    method.train_core(model, TensorSource(x_core, y_core), cfg)
    method.fit(model, TensorSource(x_user, y_user), cfg)
    result = method.forget(model, TensorSource(x_retained, y_retained), cfg)
    bound = method.bound(result, cfg)             # bound.kl_nats, bound.kl_bits
    sha = save_weights("v2.safetensors", model, user_override=method.release(model, cfg))
    served = load_model("v2.safetensors")         # an nn.Module computing f_ML

Importing this package does not import torch: names load on first use (PEP 562), so the
service may import the torch-free method configs (``workers.unlearning.methods.<name>.config``,
``workers.unlearning.methods.config_classes``) for validation without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "Bound": "bounds", "exact_bound": "bounds", "information_bound": "bounds", "tol_for_kl": "bounds",
    "TensorSource": "data", "concat": "data",
    "ConfigError": "errors", "InvalidDataError": "errors", "UnlearningError": "errors",
    "auc": "evaluation", "evaluate": "evaluation", "membership_inference_auc": "evaluation", "per_sample_loss": "evaluation",
    "GateResult": "gates", "check_gates": "gates",
    "MixedLinearModel": "linearized", "resolve_device": "linearized",
    "MixedLinearConfig": "methods.mixed_linear.config",
    "ForgettingMethod": "methods.base", "ModelSpec": "methods.base",
    "build_network": "networks",
    "GramState": "objective", "Objective": "objective", "SolveResult": "objective", "gram_state": "objective",
    "get_method": "registry", "list_methods": "registry", "register": "registry", "unregister": "registry",
    "load_model": "serialization", "load_model_from_bytes": "serialization", "save_weights": "serialization", "to_bytes": "serialization",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from workers.unlearning.bounds import Bound, exact_bound, information_bound, tol_for_kl  # noqa: F401
    from workers.unlearning.data import TensorSource, concat  # noqa: F401
    from workers.unlearning.errors import ConfigError, InvalidDataError, UnlearningError  # noqa: F401
    from workers.unlearning.linearized import MixedLinearModel  # noqa: F401
    from workers.unlearning.objective import GramState, Objective, SolveResult  # noqa: F401
    from workers.unlearning.registry import get_method, list_methods, register  # noqa: F401
