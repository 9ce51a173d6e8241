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
"""

from workers.unlearning.bounds import Bound, exact_bound, information_bound, tol_for_kl
from workers.unlearning.data import TensorSource, concat
from workers.unlearning.errors import ConfigError, InvalidDataError, UnlearningError
from workers.unlearning.evaluation import auc, evaluate, membership_inference_auc, per_sample_loss
from workers.unlearning.gates import GateResult, check_gates
from workers.unlearning.linearized import MixedLinearModel, resolve_device
from workers.unlearning.methods.mixed_linear.config import MixedLinearConfig
from workers.unlearning.networks import build_network
from workers.unlearning.objective import GramState, Objective, SolveResult, gram_state
from workers.unlearning.registry import get_method, list_methods, register
from workers.unlearning.serialization import load_model, load_model_from_bytes, save_weights, to_bytes

__all__ = [
    "Bound",
    "ConfigError",
    "GateResult",
    "GramState",
    "InvalidDataError",
    "MixedLinearConfig",
    "MixedLinearModel",
    "Objective",
    "SolveResult",
    "TensorSource",
    "UnlearningError",
    "auc",
    "build_network",
    "check_gates",
    "concat",
    "evaluate",
    "exact_bound",
    "get_method",
    "gram_state",
    "information_bound",
    "list_methods",
    "load_model",
    "load_model_from_bytes",
    "membership_inference_auc",
    "per_sample_loss",
    "register",
    "resolve_device",
    "save_weights",
    "to_bytes",
    "tol_for_kl",
]
