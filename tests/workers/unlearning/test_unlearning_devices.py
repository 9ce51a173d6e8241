"""The forget of the pipeline (Newton step from kept Gram sums) on each device and dtype, against
the independent dense float64 oracle on the CPU. CUDA cases are marked ``gpu`` and skipped
without CUDA (`bench/gpu.sh` runs them on a GPU machine); the CPU float32 case stands in for
the GPU's default dtype everywhere else."""

from __future__ import annotations

import copy

import pytest
import torch
from unlearning_oracle import tiny_problem

from workers.unlearning import MixedLinearModel, ModelSpec, TensorSource

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.cpu().to(torch.float64) - b).norm() / b.norm())


def on(model: MixedLinearModel, device: str, dtype: str) -> MixedLinearModel:
    """The same core network (its trained weights) on another device and dtype."""
    return MixedLinearModel(copy.deepcopy(model.network), model.linearize, model.target_scale, architecture=model.architecture,
                            architecture_config=model.architecture_config, device=device, dtype=dtype)


def own_features_solution(model: MixedLinearModel, x: torch.Tensor, y: torch.Tensor, mu: float) -> torch.Tensor:
    """The exact minimiser for THIS model's features (float32 on a float32 model), solved densely
    in float64 on the CPU: the reference of the bound's claim, which is about the computed features."""
    with torch.no_grad():
        phi = model.features(x).cpu().to(torch.float64)
        f0 = model.head(model.features(x)).cpu().to(torch.float64)
    a = torch.cat([phi, torch.ones(len(phi), 1, dtype=torch.float64)], dim=1)
    t = torch.zeros_like(f0)
    t[torch.arange(len(y)), y] = model.target_scale
    n = len(y)
    sol = torch.linalg.solve(a.T @ a / n + mu * torch.eye(a.shape[1], dtype=torch.float64), a.T @ (t - f0) / n)
    parts = {name: (sol[:-1].T if p.ndim == 2 else sol[-1]) for name, p in model.user.items()}
    return torch.cat([parts[name].reshape(-1) for name in model.user])


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_forget_from_kept_gram_sums_matches_the_float64_oracle(device, dtype):
    cpu, method, cfg, x, y, subj, oracle = tiny_problem(linearize="last:1", n=60, hidden=[6], subjects=10, mu=1e-3, kappa=1.0)
    model = on(cpu, device, dtype)
    ids = torch.arange(len(y))
    cfg = cfg.model_copy(update={"tol": 1e-9, "noise_std": 1e-2, "device": device, "dtype": dtype})
    method.fit(model, TensorSource(x, y, 7, ids=ids), cfg)
    gone = (subj == 3) | (subj == 7)
    keep = (~gone).nonzero().reshape(-1)
    res = method.forget(model, TensorSource(x[keep], y[keep], 7, ids=keep), cfg, removed=TensorSource(x[gone], y[gone], 7, ids=gone.nonzero().reshape(-1)))
    assert res.path == "gram-downdate"
    w = model.flatten(model.user)
    bound = method.bound(res, cfg)
    true_kl = float((w.cpu() - own_features_solution(model, x[keep], y[keep], cfg.l2)).norm() ** 2 / (2 * cfg.noise_std**2))
    assert bound.kl_nats >= true_kl  # never too small, whatever the dtype
    if dtype == "float64":
        assert res.converged and rel(w, oracle.solve(keep)) <= 1e-9
    else:  # float32 features and weights: close to the float64 model, and the bound says how close
        assert rel(w, oracle.solve(keep)) <= 1e-3


def test_the_config_dtype_is_honoured_by_build_and_by_the_private_round_trip():
    from workers.unlearning import get_method

    method = get_method("mixed_linear")
    cfg = method.config_cls(device="cpu", dtype="float32", core_epochs=1)
    spec = ModelSpec("mlp", {"in_features": 4, "hidden": [3], "num_classes": 2}, "last:1")
    model = method.build(spec, cfg)
    assert model.dtype_ == torch.float32 and all(p.dtype == torch.float32 for p in model.network.parameters())
    again = method.load_private(method.save_private(model), cfg)
    assert again.dtype_ == torch.float32
    assert method.build(spec, cfg.model_copy(update={"dtype": "auto"})).dtype_ == torch.float64  # auto on the CPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_cnn_explicit_forget_reaches_the_float64_solution():
    """A CNN head of two layers (explicit products, not the Gram path): forget on CUDA in float64
    from the fitted weights equals the dense retrain on the CPU."""
    cpu, method, cfg, x, y, subj, oracle = tiny_problem(arch="cnn", d=4, hidden=3, linearize="last:2", n=40)
    model = on(cpu, "cuda", "float64")
    cfg = cfg.model_copy(update={"device": "cuda", "dtype": "float64"})
    method.fit(model, TensorSource(x, y, 7), cfg)
    keep = (subj != 2).nonzero().reshape(-1)
    res = method.forget(model, TensorSource(x[keep], y[keep], 7), cfg)
    assert res.converged and res.path == "explicit"
    assert rel(model.flatten(model.user), oracle.solve(keep)) <= 1e-8
