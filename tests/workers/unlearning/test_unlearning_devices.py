"""The forget of the pipeline (Newton step from kept Gram sums) on each device and dtype, against
the independent dense float64 oracle on the CPU. CUDA cases are marked ``gpu`` and skipped
without CUDA (`bench/gpu.sh` runs them on a GPU machine); the CPU float32 case stands in for
the GPU's default dtype everywhere else."""

from __future__ import annotations

import copy

import pytest
import torch
from unlearning_oracle import tiny_problem

from workers.unlearning import MixedLinearModel, ModelSpec, TensorSource, check_gates

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.cpu().to(torch.float64) - b).norm() / b.norm())


def on(model: MixedLinearModel, device: str, dtype: str) -> MixedLinearModel:
    """The same core network (its trained weights) on another device and dtype."""
    return MixedLinearModel(copy.deepcopy(model.network), model.linearize, model.target_scale, architecture=model.architecture,
                            architecture_config=model.architecture_config, device=device, dtype=dtype)


def own_features_solution(model: MixedLinearModel, x: torch.Tensor, y: torch.Tensor, mu: float, ids: torch.Tensor | None = None) -> torch.Tensor:
    """The exact minimiser for THIS model's features (float32 on a float32 prefix), solved densely
    in float64 on the CPU: the reference of the bound's claim, which is about the computed features.
    A float32 prefix keeps its fitted set's features (``fitted_gram.F``): those define the model on
    the retained samples (recomputing them can differ in the last float32 bits), so with ``ids``
    they are taken from there (the test checks they are the prefix's outputs up to float32 rounding)."""
    with torch.no_grad():
        phi = model.features(x).cpu().to(torch.float64)
        kept = model.fitted_gram.F if model.fitted_gram is not None else None
        if kept is not None and ids is not None:
            order = torch.argsort(ids)
            assert torch.equal(model.fitted_gram.ids, ids[order])
            stored = torch.empty_like(phi)
            stored[order] = kept.to(torch.float64)
            assert float((stored - phi).abs().max()) <= 1e-5 * max(1.0, float(phi.abs().max()))
            phi = stored
        f0 = model.head(phi.to(model.device_, model.dtype_)).cpu().to(torch.float64)
    a = torch.cat([phi, torch.ones(len(phi), 1, dtype=torch.float64)], dim=1)
    t = torch.zeros_like(f0)
    t[torch.arange(len(y)), y] = model.target_scale
    n = len(y)
    sol = torch.linalg.solve(a.T @ a / n + mu * torch.eye(a.shape[1], dtype=torch.float64), a.T @ (t - f0) / n)
    parts = {name: (sol[:-1].T if p.ndim == 2 else sol[-1]) for name, p in model.user.items()}
    return torch.cat([parts[name].reshape(-1) for name in model.user])


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("dtype", ["float64", "float32", "mixed"])
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
    true_kl = float((w.cpu() - own_features_solution(model, x[keep], y[keep], cfg.l2, keep)).norm() ** 2 / (2 * cfg.noise_std**2))
    assert bound.kl_nats >= true_kl  # never too small, whatever the dtype
    if dtype == "float64":
        assert res.converged and rel(w, oracle.solve(keep)) <= 1e-9
    elif dtype == "mixed":  # float32 features, float64 weights: exact on its own features, near the float64 network's
        assert res.converged and rel(w, own_features_solution(model, x[keep], y[keep], cfg.l2, keep)) <= 1e-9
        assert rel(w, oracle.solve(keep)) <= 1e-4
    else:  # float32 features and weights: close to the float64 model, and the bound says how close
        assert rel(w, oracle.solve(keep)) <= 1e-3


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_mixed_precision_certifies_a_chained_forget_at_the_release_noise(device, arch):
    """dtype=mixed (what auto means on CUDA): float32 prefix, float64 head, user weights, Gram sums
    and residual. At the default release noise (s = 3e-4) the bound passes the 1e-3 KL gate and
    stays above the true KL (against the dense float64 solve on the model's own float32-prefix
    features) through two chained forgets and a private round trip; a float32 model does not."""
    if arch == "cnn":
        cpu, method, cfg, x, y, subj, oracle = tiny_problem(arch="cnn", d=4, hidden=5, linearize="last:1", n=60, subjects=10, mu=1e-3, kappa=1.0)
    else:
        cpu, method, cfg, x, y, subj, oracle = tiny_problem(linearize="last:1", n=60, hidden=[6], subjects=10, mu=1e-3, kappa=1.0)
    cfg = cfg.model_copy(update={"tol": 1e-9, "device": device, "dtype": "mixed"})
    assert cfg.noise_std == 3e-4 and cfg.max_kl_per_release == 1e-3
    model = on(cpu, device, "mixed")
    assert model.prefix_dtype_ == torch.float32 and model.dtype_ == torch.float64
    assert {p.dtype for p in model.prefix.parameters()} == {torch.float32}
    assert {p.dtype for p in model.head.parameters()} == {torch.float64} and {t.dtype for t in model.user.values()} == {torch.float64}
    assert model.features(x[:3]).dtype == torch.float64
    ids = torch.arange(len(y))
    method.fit(model, TensorSource(x, y, 7, ids=ids), cfg)
    keep = ids
    for step, gone_subject in enumerate((3, 7)):
        if step:  # the next job starts from the private files
            model = method.load_private(method.save_private(model), cfg)
            assert model.prefix_dtype_ == torch.float32 and model.fitted_gram is not None
        gone = keep[subj[keep] == gone_subject]
        keep = keep[subj[keep] != gone_subject]
        res = method.forget(model, TensorSource(x[keep], y[keep], 7, ids=keep), cfg, removed=TensorSource(x[gone], y[gone], 7, ids=gone))
        assert res.path == "gram-downdate" and res.converged
        w = model.flatten(model.user).cpu()
        bound = method.bound(res, cfg)
        true_kl = float((w - own_features_solution(model, x[keep], y[keep], cfg.l2, keep)).norm() ** 2 / (2 * cfg.noise_std**2))
        assert true_kl <= bound.kl_nats <= cfg.max_kl_per_release
        assert check_gates(bound, None, None, cfg).ok
        assert rel(w, oracle.solve(keep)) <= 1e-4  # float32 features: close to the float64 network's solution
    # the same forget with float32 user weights: its residual floors at float32 rounding, the bound is
    # orders of magnitude larger (157 nats on the H200 benchmark: why auto no longer means float32 on CUDA)
    f32 = on(cpu, device, "float32")
    method.fit(f32, TensorSource(x, y, 7, ids=ids), cfg.model_copy(update={"dtype": "float32"}))
    gone = (subj == 3).nonzero().reshape(-1)
    kept = (subj != 3).nonzero().reshape(-1)
    res = method.forget(f32, TensorSource(x[kept], y[kept], 7, ids=kept), cfg, removed=TensorSource(x[gone], y[gone], 7, ids=gone))
    assert method.bound(res, cfg).kl_nats > 1e6 * bound.kl_nats


def test_auto_is_float64_on_the_cpu_and_mixed_on_cuda():
    from workers.unlearning.linearized import compute_dtypes

    assert compute_dtypes(torch.device("cpu"), "auto") == (torch.float64, torch.float64)
    assert compute_dtypes(torch.device("cuda"), "auto") == (torch.float32, torch.float64)
    assert compute_dtypes(torch.device("cpu"), "mixed") == (torch.float32, torch.float64)
    assert compute_dtypes(torch.device("cuda"), "float32") == (torch.float32, torch.float32)


def test_mixed_precision_trains_its_core_and_survives_the_private_round_trip():
    from workers.unlearning import get_method

    method = get_method("mixed_linear")
    cfg = method.config_cls(device="cpu", dtype="mixed", core_epochs=1, chunk_size=16)
    spec = ModelSpec("cnn", {"in_channels": 1, "height": 4, "width": 4, "num_classes": 3, "channels": [2], "hidden": 5}, "last:1")
    model = method.build(spec, cfg)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 4, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    before = [p.clone() for p in model.network.parameters()]
    method.prepare(model, TensorSource(x, y, 16), cfg)
    assert any(not torch.equal(a, b.to(a.dtype)) for a, b in zip(before, model.network.parameters()))  # it trained
    assert {p.dtype for p in model.prefix.parameters()} == {torch.float32}
    assert {p.dtype for p in model.head.parameters()} == {torch.float64}
    method.fit(model, TensorSource(x, y, 16, ids=torch.arange(40)), cfg)
    again = method.load_private(method.save_private(model), cfg)
    assert torch.equal(again.features(x), model.features(x))  # the kept Gram sums describe the reloaded model exactly
    assert torch.equal(again(x), model(x))
    assert torch.equal(again.fitted_gram.G, model.fitted_gram.G)


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


def test_the_evaluation_runs_on_the_new_weights_and_reuses_kept_features_only_where_they_are_the_models():
    """The job's evaluation (eval, retain sample, forget set, membership attack) is memoised per
    user weights: after a forget it is recomputed on the new weights; the retained samples of a
    float32-prefix model go through the head on the kept features, and agree with a full pass."""
    from workers.unlearning.evaluation import evaluate, membership_inference_auc

    cpu, method, cfg, x, y, subj, _ = tiny_problem(arch="cnn", d=4, hidden=5, linearize="last:1", n=60, subjects=10, mu=1e-3, kappa=1.0)
    cfg = cfg.model_copy(update={"dtype": "mixed"})
    model = on(cpu, "cpu", "mixed")
    ids = torch.arange(len(y))
    user = TensorSource(x, y, 7, ids=ids)
    method.fit(model, user, cfg)
    ev = TensorSource(x[:20] + 0.1, y[:20], 7)
    before = evaluate(model, ev)
    assert evaluate(model, ev) == before  # memoised: same numbers
    gone = (subj == 3).nonzero().reshape(-1)
    keep = (subj != 3).nonzero().reshape(-1)
    method.forget(model, user.subset(keep), cfg, removed=user.subset(gone))

    def direct(src):  # the model's outputs from a full pass through the network, no memo, no kept rows
        with torch.no_grad():
            f = model.forward_features(model.features(src.x))
            r = f - model.targets(src.y, f.shape[1])
        return f, 0.5 * (r**2).sum(dim=1)

    f, loss = direct(ev)
    after = evaluate(model, ev)
    assert after["loss"] != before["loss"] and abs(after["loss"] - float(loss.mean())) <= 1e-12
    retained = user.subset(keep[::2])
    spy = {"prefix": 0}
    hook = model.prefix.register_forward_hook(lambda *a: spy.__setitem__("prefix", spy["prefix"] + 1))
    r_eval = evaluate(model, retained)
    assert spy["prefix"] == 0  # head only, on the kept features
    hook.remove()
    f, loss = direct(retained)
    assert abs(r_eval["loss"] - float(loss.mean())) <= 1e-6 * max(1.0, float(loss.mean()))
    assert r_eval["accuracy"] == float((f.argmax(1) == retained.y).double().mean())
    removed = user.subset(gone)
    auc = membership_inference_auc(model, removed, ev)
    model.zero_user()  # new weights: the memo no longer applies
    assert evaluate(model, ev)["loss"] != after["loss"]
    assert membership_inference_auc(model, removed, ev) == membership_inference_auc(model, removed, ev)
    assert 0.0 <= auc <= 1.0


def test_sums_kept_under_another_prefix_precision_are_rebuilt_not_downdated():
    """A version fitted in float64 (its features kept in float64) and forgotten by a mixed-precision worker
    (auto on CUDA) must not subtract float32-recomputed features from float64 sums: forget
    rebuilds D_r's sums (and stays exact on its own features); forget_downdate refuses."""
    from workers.unlearning import InvalidDataError

    cpu, method, cfg, x, y, subj, _ = tiny_problem(linearize="last:1", n=60, hidden=[6], subjects=10, mu=1e-3, kappa=1.0)
    ids = torch.arange(len(y))
    method.fit(cpu, TensorSource(x, y, 7, ids=ids), cfg)
    mixed = method.load_private(method.save_private(cpu), cfg.model_copy(update={"dtype": "mixed"}))
    assert mixed.keeps_features and mixed.fitted_gram.F.dtype == torch.float64
    gone = (subj == 3).nonzero().reshape(-1)
    keep = (subj != 3).nonzero().reshape(-1)
    with pytest.raises(InvalidDataError, match="precision"):
        method.forget_downdate(mixed, None, TensorSource(x[gone], y[gone], 7, ids=gone), cfg)
    res = method.forget(mixed, TensorSource(x[keep], y[keep], 7, ids=keep), cfg, removed=TensorSource(x[gone], y[gone], 7, ids=gone))
    assert res.path != "gram-downdate" and mixed.fitted_gram.F is not None
    w = mixed.flatten(mixed.user)
    assert rel(w, own_features_solution(mixed, x[keep], y[keep], cfg.l2, keep)) <= 1e-9
