"""Every way of running the passes (Gram, explicit Linear/activation products, generic
torch.func, cached or streamed) against the independent dense oracle, plus bounds and gates."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from unlearning_oracle import tiny_problem

from workers.unlearning import (
    InvalidDataError,
    Objective,
    SolveResult,
    TensorSource,
    check_gates,
    get_method,
    information_bound,
)

CASES = [
    # id, tiny_problem kwargs, Objective kwargs, expected path
    ("mlp-all-tanh", {}, {}, "explicit"),
    ("mlp-all-relu-2", {"hidden": [4, 3], "activation": "relu"}, {}, "explicit"),
    ("mlp-all-streamed", {}, {"cache_bytes": 0}, "explicit"),
    ("mlp-all-generic", {}, {"use_explicit": False}, "generic"),
    ("mlp-all-jacobi", {}, {"precondition": True}, "explicit"),
    ("mlp-last1-gram", {"linearize": "last:1"}, {}, "gram"),
    ("mlp-last1-explicit", {"linearize": "last:1"}, {"use_gram": False}, "explicit"),
    ("mlp-last2", {"hidden": [4, 3], "linearize": "last:2", "activation": "relu"}, {}, "explicit"),
    ("cnn-all", {"arch": "cnn", "d": 3, "hidden": 3}, {}, "generic"),
    ("cnn-last2", {"arch": "cnn", "d": 3, "hidden": 3, "linearize": "last:2"}, {}, "explicit"),
    ("cnn-last3-streamed", {"arch": "cnn", "d": 3, "hidden": 3, "linearize": "last:3"}, {"cache_bytes": 0}, "generic"),
]


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("case", "problem", "kwargs", "path"), CASES, ids=[c[0] for c in CASES])
def test_gradient_hvp_and_fit_on_every_path_match_the_dense_oracle(case, problem, kwargs, path):
    model, method, cfg, x, y, _, oracle = tiny_problem(n=20, **problem)
    obj = Objective(model, TensorSource(x, y, chunk_size=6), cfg.l2, **kwargs)
    assert obj.path == path
    P = model.num_user_parameters
    g = torch.Generator().manual_seed(7)
    w = torch.randn(P, generator=g, dtype=torch.float64)
    v = torch.randn(P, generator=g, dtype=torch.float64)

    w_req = w.clone().requires_grad_(True)
    loss = oracle.loss(w_req)
    (auto_grad,) = torch.autograd.grad(loss, w_req)
    lib_loss, lib_grad = obj.loss_and_grad(model.unflatten(w))
    assert rel(lib_grad, auto_grad) <= 1e-10
    assert abs(lib_loss - loss.item()) <= 1e-10 * abs(loss.item())

    H_dense = oracle.hessian()  # JᵀJ/N + μI from the explicit Jacobian
    hv = obj.hvp(v)
    assert rel(hv, H_dense @ v) <= 1e-8
    # the μ/2 mistake moves the product by far more than the tolerance
    assert rel(hv - 0.5 * cfg.l2 * v, H_dense @ v) > 1e-6

    w0 = {k: torch.zeros_like(t) for k, t in model.user.items()}
    w_fit, res = obj.minimise(w0, tol=1e-12, max_iter=5000)
    assert res.converged and res.path == path
    # the reported residual is the true gradient norm, recomputed independently
    assert abs(res.residual_norm - float(oracle_grad(oracle, model.flatten(w_fit)).norm())) <= 1e-13
    assert rel(model.flatten(w_fit), oracle.solve()) <= 1e-8


def oracle_grad(oracle, w):
    w = w.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(oracle.loss(w), w)
    return g


_SYM = tiny_problem(n=20, hidden=[4, 3], activation="relu")
_SYM_OBJ = Objective(_SYM[0], TensorSource(_SYM[3], _SYM[4], chunk_size=6), _SYM[2].l2)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(-3, 3), st.floats(-3, 3))
def test_hvp_is_symmetric_and_linear(seed, a, b):
    g = torch.Generator().manual_seed(seed)
    P = _SYM[0].num_user_parameters
    u, v = torch.randn(P, generator=g, dtype=torch.float64), torch.randn(P, generator=g, dtype=torch.float64)
    hu, hv = _SYM_OBJ.hvp(u), _SYM_OBJ.hvp(v)
    assert abs(float(u @ hv) - float(v @ hu)) <= 1e-10 * (1 + abs(float(u @ hv)))
    assert torch.allclose(_SYM_OBJ.hvp(a * u + b * v), a * hu + b * hv, rtol=1e-10, atol=1e-12)
    # positive definite with smallest eigenvalue ≥ μ
    assert float(u @ hu) >= _SYM[2].l2 * float(u @ u) * (1 - 1e-12)


def test_streamed_forget_matches_the_oracle_and_cached():
    model, method, cfg, x, y, subj, oracle = tiny_problem(n=30, subjects=10, hidden=[4, 3], activation="relu")
    method.fit(model, TensorSource(x, y), cfg)
    keep = (subj != 4).nonzero().reshape(-1)
    start = {k: v.clone() for k, v in model.user.items()}
    res = method.forget(model, TensorSource(x[keep], y[keep], chunk_size=4), cfg.model_copy(update={"cache_bytes": 0}))
    assert res.operation == "forget" and res.path == "explicit"
    assert rel(model.flatten(model.user), oracle.solve(keep)) <= 1e-6
    streamed = model.flatten(model.user)
    model.user = start
    method.forget(model, TensorSource(x[keep], y[keep], chunk_size=4), cfg)
    assert rel(model.flatten(model.user), streamed) <= 1e-9


def test_bound_edge_cases_and_automatic_exactness():
    method = get_method("mixed_linear")
    cfg = method.config_cls(l2=0.1, noise_std=0.0)
    b = information_bound(1e-6, 0.1, 0.0)
    assert b.kl_nats == math.inf and b.kl_bits == math.inf  # no noise, inexact: no bound, said plainly
    assert information_bound(0.0, 0.1, 0.0).kl_nats == 0.0
    b = information_bound(2e-6, 0.1, 1e-3)
    assert math.isclose(b.kl_nats, (2e-6) ** 2 / (2 * 0.1**2 * 1e-6)) and math.isclose(b.kl_bits, b.kl_nats / math.log(2))
    assert b.to_dict()["guarantee"] == "certified"
    zero = method.bound(SolveResult(operation="zero"), cfg)
    assert (zero.kl_nats, zero.guarantee, zero.method) == (0.0, "exact", "zero")
    retrain = method.bound(SolveResult(operation="retrain", residual_norm=1e-9, iterations=5), cfg)
    assert (retrain.kl_nats, retrain.guarantee, retrain.residual_norm) == (0.0, "exact", 1e-9)
    forget = method.bound(SolveResult(operation="forget", residual_norm=1e-9), cfg)
    assert forget.guarantee == "certified" and forget.kl_nats == math.inf


def test_gates():
    method = get_method("mixed_linear")
    cfg = method.config_cls(max_kl_per_release=1e-3, max_accuracy_drop=0.01)
    good = information_bound(1e-10, 1e-3, 1e-3)
    bad = information_bound(1e-4, 1e-3, 1e-3)
    assert check_gates(good, {"accuracy": 0.9}, {"accuracy": 0.895}, cfg).ok
    r = check_gates(bad, {"accuracy": 0.9}, {"accuracy": 0.9}, cfg)
    assert not r.ok and "kl_nats" in r.reasons[0]
    r = check_gates(good, {"accuracy": 0.9}, {"accuracy": 0.85}, cfg)
    assert not r.ok and "accuracy" in r.reasons[0]
    r = check_gates(information_bound(1e-6, 1e-3, 0.0), {"accuracy": 0.9}, {"accuracy": 0.8}, cfg)
    assert not r.ok and len(r.reasons) == 2


def test_wrong_input_shapes_are_refused():
    model, method, cfg, x, y, _, _ = tiny_problem(arch="cnn", d=3, hidden=3, linearize="last:2")
    with pytest.raises(InvalidDataError, match="shape"):
        method.fit(model, TensorSource(x.reshape(len(x), 9), y), cfg)
    model, method, cfg, x, y, _, _ = tiny_problem()
    with pytest.raises(InvalidDataError, match="do not fit"):
        method.fit(model, TensorSource(torch.randn(len(y), 5, dtype=torch.float64), y), cfg)
    with pytest.raises(InvalidDataError, match="labels"):
        method.fit(model, TensorSource(x, y - 1), cfg)  # a label of -1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float32_passes_reach_the_float64_solution():
    from workers.unlearning import MixedLinearModel

    model, method, cfg, x, y, _, oracle = tiny_problem(n=40, hidden=[8], activation="tanh")
    # a copy: building on CUDA moves the network, and the oracle keeps using the CPU one
    gpu = MixedLinearModel(copy.deepcopy(model.network), model.linearize, model.target_scale, architecture="mlp",
                           architecture_config=model.architecture_config, device="cuda", dtype="float32")
    assert gpu.dtype_ == torch.float32
    c = cfg.model_copy(update={"tol": 1e-6, "max_newton_steps": 8})
    res = method.fit(gpu, TensorSource(x, y), c)
    assert res.converged and res.residual_norm <= c.tol
    assert rel(gpu.flatten(gpu.user).cpu(), oracle.solve()) <= 1e-3


def test_downdate_from_kept_gram_sums_round_trips_and_refuses_an_empty_retained_set():
    from workers.unlearning import GramState

    model, method, cfg, x, y, subj, oracle = tiny_problem(linearize="last:1", n=30, subjects=10)
    method.fit(model, TensorSource(x, y), cfg)
    assert model.fitted_gram is not None and model.fitted_gram.n == 30
    kept = GramState.from_tensors(model.fitted_gram.to_tensors())  # as stored next to the private weights
    first = (subj == 1).nonzero().reshape(-1)
    res, retained = method.forget_downdate(model, kept, TensorSource(x[first], y[first], ids=first), cfg)
    assert res.operation == "forget" and model.fitted_gram is retained
    second = (subj == 2).nonzero().reshape(-1)
    method.forget_downdate(model, None, TensorSource(x[second], y[second], ids=second), cfg)  # chained from the model's sums
    keep = ((subj != 1) & (subj != 2)).nonzero().reshape(-1)
    assert rel(model.flatten(model.user), oracle.solve(keep)) <= 1e-6
    with pytest.raises(InvalidDataError, match="empty"):
        method.forget_downdate(model, None, TensorSource(x[keep], y[keep], ids=keep), cfg)
