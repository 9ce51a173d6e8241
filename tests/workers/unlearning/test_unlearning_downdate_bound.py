"""The downdated bound is never below the true KL (issue 16, item 2).

The truth comes from an oracle independent of the code under test: the head's features are
taken from the network, then everything else (targets, residuals at w_c, the normal equations,
their solution) is numpy in 80-bit ``longdouble`` with iterative refinement — no library sum,
Cholesky or gradient is used. True KL = ‖w' − w*_r‖² / (2 s²) (DESIGN §6.5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.unlearning import MixedLinearModel, TensorSource, get_method
from workers.unlearning.errors import ConfigError, InvalidDataError

LD = np.longdouble


def _problem(n: int, hidden: int, classes: int, seed: int, scale: float, mu: float, noise: float, kappa: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    d = 8
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:, : d // 2] *= scale  # conditioning: a few badly scaled input directions
    y = torch.randint(0, classes, (n,), generator=g)
    model = MixedLinearModel.build("mlp", {"in_features": d, "hidden": [hidden], "num_classes": classes}, "last:1", kappa, device="cpu", seed=seed)
    method = get_method("mixed_linear")
    cfg = method.config_cls(l2=mu, noise_std=noise, target_scale=kappa, tol=1e-14, max_iter=50, core_epochs=2, chunk_size=64, device="cpu")
    method.train_core(model, TensorSource(x, y, chunk_size=64), cfg)
    return model, method, cfg, x, y


def _oracle_w(model: MixedLinearModel, x: torch.Tensor, y: torch.Tensor, mu: float, kappa: float, phi: np.ndarray | None = None) -> np.ndarray:
    """argmin of L_{D_r} in augmented form [W_u, b_u] (C × (h+1)), in longdouble; ``phi``: the
    retained samples' features (default: the network's, computed here in one batch)."""
    if phi is None:
        with torch.no_grad():
            phi = model.features(x).to(torch.float64).numpy()
    lin = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][0]
    Wc = lin.weight.detach().to(torch.float64).numpy().astype(LD)
    bc = lin.bias.detach().to(torch.float64).numpy().astype(LD)
    n, C = phi.shape[0], Wc.shape[0]
    A = np.concatenate([phi.astype(LD), np.ones((n, 1), dtype=LD)], axis=1)
    T = np.zeros((n, C), dtype=LD)
    T[np.arange(n), y.numpy()] = LD(kappa)
    R0 = phi.astype(LD) @ Wc.T + bc - T
    H = A.T @ A / LD(n) + LD(mu) * np.eye(A.shape[1], dtype=LD)
    rhs = -(R0.T @ A) / LD(n)  # W H = rhs  ⇔  H Wᵀ = rhsᵀ (H symmetric)
    H64 = H.astype(np.float64)
    X = np.linalg.solve(H64, rhs.T.astype(np.float64)).astype(LD)
    for _ in range(6):  # iterative refinement with longdouble residuals
        R = rhs.T - H @ X
        X = X + np.linalg.solve(H64, R.astype(np.float64)).astype(LD)
    return X.T


def _user_aug(model: MixedLinearModel) -> np.ndarray:
    lin_names = list(model.user)
    w = {k: v.detach().to(torch.float64).numpy().astype(LD) for k, v in model.user.items()}
    W = w[[k for k in lin_names if k.endswith("weight")][0]]
    b = w[[k for k in lin_names if k.endswith("bias")][0]]
    return np.concatenate([W, b[:, None]], axis=1)


def _true_kl(model, x, y, keep, cfg) -> float:
    diff = _user_aug(model) - _oracle_w(model, x[keep], y[keep], cfg.l2, cfg.target_scale)
    return float((diff * diff).sum() / (2 * LD(cfg.noise_std) ** 2))


def _forget(n, hidden, keep_n, seed, scale, mu, noise, chunks=1):
    model, method, cfg, x, y = _problem(n, hidden, 10, seed, scale, mu, noise)
    src = TensorSource(x, y, chunk_size=64, ids=torch.arange(n) * 7 + 3)
    method.fit(model, src, cfg)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    gone_all = perm[keep_n:]
    res = None
    for part in torch.tensor_split(gone_all, chunks):
        res, _ = method.forget_downdate(model, None, src.subset(part), cfg)
    keep = torch.sort(perm[:keep_n]).values
    return model, method, cfg, x, y, keep, res


def test_regression_keep_10_of_290_the_bound_covers_the_true_kl():
    """Issue 16: MLP [64], last:1, μ=1e-3, s=3e-4, keep 10 of ~290; the bound was 7.6e-15 nats
    against a true KL of 1.6e-12. The certificate must not be smaller than the truth."""
    model, method, cfg, x, y, keep, res = _forget(290, 64, 10, 0, 1.0, 1e-3, 3e-4)
    bound = method.bound(res, cfg)
    true = _true_kl(model, x, y, keep, cfg)
    assert bound.kl_nats >= true, (bound.kl_nats, true)
    # the computed residual alone (the old certificate) does not cover it: the error term is what does
    old = res.residual_norm**2 / (2 * cfg.l2**2 * cfg.noise_std**2)
    print(f"regression: old={old:.3g} new={bound.kl_nats:.3g} true={true:.3g} nats")
    assert bound.kl_nats <= cfg.max_kl_per_release  # sound and still useful


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(40, 300),
    frac=st.floats(0.0, 0.99),
    scale=st.sampled_from([1e-2, 1.0, 30.0]),
    mu=st.sampled_from([1e-5, 1e-3, 1e-1]),
    hidden=st.sampled_from([16, 64]),
    chunks=st.integers(1, 3),
    seed=st.integers(0, 10_000),
)
def test_downdated_bound_is_never_below_the_true_kl(n, frac, scale, mu, hidden, chunks, seed):
    keep_n = max(2, n - int(round(frac * n)))
    chunks = min(chunks, max(1, n - keep_n))
    model, method, cfg, x, y, keep, res = _forget(n, hidden, keep_n, seed, scale, mu, 3e-4, chunks)
    bound = method.bound(res, cfg)
    true = _true_kl(model, x, y, keep, cfg)
    assert bound.kl_nats >= true, (bound.kl_nats, true, res.residual_norm, res.residual_error)


def test_removing_the_same_samples_twice_is_refused():
    model, method, cfg, x, y = _problem(60, 16, 4, 0, 1.0, 1e-3, 3e-4)
    src = TensorSource(x, y, ids=torch.arange(60))
    method.fit(model, src, cfg)
    method.forget_downdate(model, None, src.subset(torch.arange(5)), cfg)
    assert model.fitted_gram.n == 55 and model.fitted_gram.ids.tolist() == list(range(5, 60))
    with pytest.raises(InvalidDataError, match="not in the fitted set"):
        method.forget_downdate(model, None, src.subset(torch.arange(3, 8)), cfg)  # 3, 4 went already
    with pytest.raises(InvalidDataError, match="repeat"):
        method.forget_downdate(model, None, src.subset(torch.tensor([9, 9])), cfg)
    assert model.fitted_gram.n == 55  # refusals change nothing


def test_unknown_samples_and_samples_without_ids_are_refused():
    model, method, cfg, x, y = _problem(60, 16, 4, 0, 1.0, 1e-3, 3e-4)
    method.fit(model, TensorSource(x[:50], y[:50], ids=torch.arange(50)), cfg)
    with pytest.raises(InvalidDataError, match="not in the fitted set"):
        method.forget_downdate(model, None, TensorSource(x[50:], y[50:], ids=torch.arange(50, 60)), cfg)
    with pytest.raises(InvalidDataError, match="ids"):
        method.forget_downdate(model, None, TensorSource(x[:5], y[:5]), cfg)


def test_kept_ids_and_error_terms_survive_the_private_artifact():
    from workers.unlearning import GramState

    model, method, cfg, x, y = _problem(60, 16, 4, 0, 1.0, 1e-3, 3e-4)
    method.fit(model, TensorSource(x, y, ids=torch.arange(60) + 100), cfg)
    kept = GramState.from_tensors(model.fitted_gram.to_tensors())
    assert kept.ids.tolist() == list(range(100, 160)) and kept.eG == model.fitted_gram.eG > 0 and kept.eB > 0


def test_target_scale_that_disagrees_with_the_model_is_refused():
    model, method, cfg, x, y = _problem(40, 16, 4, 0, 1.0, 1e-3, 3e-4, kappa=1.0)
    src = TensorSource(x, y, ids=torch.arange(40))
    with pytest.raises(ConfigError, match="target_scale"):
        method.fit(model, src, cfg.model_copy(update={"target_scale": 2.0}))
    method.fit(model, src, cfg)
    with pytest.raises(ConfigError, match="target_scale"):
        method.forget_downdate(model, None, src.subset(torch.arange(3)), cfg.model_copy(update={"target_scale": 2.0}))
    with pytest.raises(ConfigError, match="target_scale"):
        method.forget(model, src.subset(torch.arange(3, 40)), cfg.model_copy(update={"target_scale": 2.0}))
    # honoured where the method builds the model itself
    from workers.unlearning.methods.base import ModelSpec

    spec = ModelSpec(architecture="mlp", architecture_config={"in_features": 8, "hidden": [4], "num_classes": 4}, linearize="last:1")
    assert method.build(spec, cfg.model_copy(update={"target_scale": 2.0})).target_scale == 2.0


def test_forget_with_the_removed_samples_downdates_and_agrees_with_the_rebuild():
    model, method, cfg, x, y = _problem(120, 16, 4, 0, 1.0, 1e-3, 3e-4)
    src = TensorSource(x, y, ids=torch.arange(120) + 1000)
    method.fit(model, src, cfg)
    start = {k: v.clone() for k, v in model.user.items()}
    kept_gram = model.fitted_gram
    keep, gone = src.subset(torch.arange(10, 120)), src.subset(torch.arange(10))
    res = method.forget(model, keep, cfg, removed=gone)
    assert res.path == "gram-downdate" and model.fitted_gram.ids.tolist() == list(range(1010, 1120))
    w_down = model.flatten(model.user)
    model.user, model.fitted_gram = {k: v.clone() for k, v in start.items()}, kept_gram
    # a fitted sample that left D_r without being among the removed: no downdate, a rebuild
    res2 = method.forget(model, src.subset(torch.arange(11, 120)), cfg, removed=gone)
    assert res2.path == "gram" and model.fitted_gram.n == 109
    model.user, model.fitted_gram = {k: v.clone() for k, v in start.items()}, kept_gram
    res3 = method.forget(model, keep, cfg)  # without the removed samples: the rebuild
    assert res3.path == "gram"
    assert float((w_down - model.flatten(model.user)).norm() / model.flatten(model.user).norm()) <= 1e-9


def test_bound_covers_a_worst_placed_error_inside_the_kept_error_terms():
    """Real rounding is far below the worst case, so the random tests cannot tell whether the
    kept sums' error terms are used. Here the kept B is moved by half its claimed error (eB),
    along H's smallest eigenvector (λ = μ: 10 samples, 65 features), which moves w' the most;
    the bound must still cover the truth (and does not without the sums' error term)."""
    from workers.unlearning import GramState
    from workers.unlearning.objective import Objective

    model, method, cfg, x, y, keep, _ = _forget(290, 64, 10, 0, 1.0, 1e-3, 3e-4)
    st = model.fitted_gram
    lam, vecs = np.linalg.eigh(st.G.numpy() / st.n + cfg.l2 * np.eye(st.G.shape[0]))
    v = torch.from_numpy(vecs[:, 0].copy())
    e0 = torch.zeros(st.B.shape[0], dtype=torch.float64)
    e0[0] = 1.0
    moved = GramState(st.G, st.B + 0.5 * st.eB * torch.outer(e0, v), st.c0, st.n, st.eG, st.eB, st.ids)
    w, res = Objective.from_gram(model, moved, cfg.l2).minimise(
        {k: t.clone() for k, t in model.user.items()}, tol=cfg.tol, max_iter=cfg.max_iter, max_newton_steps=cfg.max_newton_steps)
    res.operation = "forget"
    model.user = w
    true = _true_kl(model, x, y, keep, cfg)
    bound = method.bound(res, cfg).kl_nats
    print(f"worst-placed: bound={bound:.3g} true={true:.3g} computed-residual-only={res.residual_norm**2 / (2 * cfg.l2**2 * cfg.noise_std**2):.3g}")
    assert true > 1e-4 * bound  # the move is a visible share of the certificate
    assert bound >= true, (bound, true)


# -- float64 prefixes: a downdate subtracts exactly the rows that were summed ------------------------
#
# BLAS results depend on the batch shape (another kernel or blocking for 1 row than for 60), in
# float64 too. A prefix whose features come out of a cancellation (inputs on a large offset that
# the first layer's bias removes: z = W(x0 + c) + (b − Wc)) carries a forward error ~‖W‖‖c‖·u that
# is far above the Gram sums' γ_d terms, and it differs between batch shapes. Recomputing the
# forgotten samples' features at forget time (another chunking than the fit's) would subtract rows
# that differ from the summed ones by that much, and no error term of the bound covers it.

OFFSET = 1e6


def _offset_problem(n: int, seed: int, mu: float):
    model, method, cfg, x0, y = _problem(n, 64, 10, seed, 1.0, mu, 3e-4)
    first = [m for m in model.prefix.modules() if isinstance(m, torch.nn.Linear)][0]
    c = torch.full((x0.shape[1],), OFFSET, dtype=torch.float64)
    with torch.no_grad():
        first.bias -= first.weight @ c
    return model, method, cfg, x0 + c, y


def _features_in_chunks(model: MixedLinearModel, x: torch.Tensor, size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.features(x[i : i + size]) for i in range(0, len(x), size)]).to(torch.float64)


def _true_kl_on(model, y, phi: torch.Tensor, cfg) -> float:
    diff = _user_aug(model) - _oracle_w(model, None, y, cfg.l2, cfg.target_scale, phi=phi.numpy())
    return float((diff * diff).sum() / (2 * LD(cfg.noise_std) ** 2))


def _chained_float64_forgets(n: int, keep_n: int, seed: int, mu: float, chunk_sizes=(1, 13, 7)):
    """Fit in chunks of 60, then forget in len(chunk_sizes) pieces read in other chunk sizes; after
    each: (bound, true KL against the fit-time rows of the retained samples, w's distance to the oracle)."""
    model, method, cfg, x, y = _offset_problem(n, seed, mu)
    assert model.prefix_dtype_ == torch.float64 == model.dtype_
    ids = torch.arange(n) * 7 + 3
    method.fit(model, TensorSource(x, y, chunk_size=60, ids=ids), cfg)
    fit_rows = _features_in_chunks(model, x, 60)  # the rows the fit summed (same shapes: bit for bit)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    live = torch.ones(n, dtype=torch.bool)
    out = []
    for part, size in zip(torch.tensor_split(perm[keep_n:], len(chunk_sizes)), chunk_sizes):
        part = torch.sort(part).values
        res, _ = method.forget_downdate(model, None, TensorSource(x[part], y[part], chunk_size=size, ids=ids[part]), cfg)
        live[part] = False
        keep = live.nonzero().reshape(-1)
        kl = _true_kl_on(model, y[keep], fit_rows[keep], cfg)
        w_star = _oracle_w(model, None, y[keep], cfg.l2, cfg.target_scale, phi=fit_rows[keep].numpy())
        err = float(np.abs(_user_aug(model) - w_star).max() / np.abs(w_star).max())
        out.append((method.bound(res, cfg).kl_nats, kl, err, res))
    return model, x, fit_rows, live, out


def test_float64_features_differ_between_batch_shapes_here():
    """The premise, on this machine's BLAS: the same samples' float64 features in chunks of 1 or 13
    are not bit for bit those computed in chunks of 60 (so a recomputed row is not the summed row)."""
    model, _, _, x, _ = _offset_problem(200, 0, 1e-3)
    rows = _features_in_chunks(model, x, 60)
    diffs = {s: float((_features_in_chunks(model, x, s) - rows).abs().max()) for s in (1, 2, 13)}
    print(f"float64 feature differences by batch shape (offset {OFFSET:g}): {diffs}")
    if max(diffs.values()) == 0:  # a property of the BLAS, not of Lethe: say so rather than fail elsewhere
        pytest.skip("this machine's BLAS gives batch-invariant float64 features: the premise does not show here")
    assert max(diffs.values()) > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float64_chained_downdates_subtract_the_summed_rows_and_the_bound_covers_the_truth(seed):
    """Three chained forgets (keep 20 of 200) of a float64 prefix, the forgotten samples read in
    chunks of 1, 13 and 7: every version equals the longdouble solve on the rows the fit summed,
    the kept rows are those rows bit for bit, and every bound ≥ the true KL."""
    model, x, fit_rows, live, out = _chained_float64_forgets(200, 20, seed, 1e-3)
    for bound, kl, err, res in out:
        print(f"seed {seed}: bound={bound:.3g} true={kl:.3g} rel.err={err:.2g} residual={res.residual_norm:.2g}+{res.residual_error:.2g}")
        assert bound >= kl, (bound, kl)
        assert err <= 1e-8
    kept = model.fitted_gram
    assert kept.F is not None and kept.F.dtype == torch.float64
    assert torch.equal(kept.F, fit_rows[live])  # exactly the rows that were added


def test_float64_sums_kept_without_their_rows_are_rebuilt_not_downdated():
    """Sums a float64 version kept before its rows were kept (an older private artifact: no ``F``)
    cannot say which rows they hold: forget_downdate refuses them, forget rebuilds D_r's sums."""
    from workers.unlearning import GramState

    model, method, cfg, x, y = _problem(80, 16, 4, 0, 1.0, 1e-3, 3e-4)
    src = TensorSource(x, y, chunk_size=30, ids=torch.arange(80))
    method.fit(model, src, cfg)
    assert model.fitted_gram.F is not None and model.fitted_gram.F.dtype == torch.float64
    old = model.fitted_gram.to_tensors()
    del old["F"]
    model.fitted_gram = GramState.from_tensors(old)
    with pytest.raises(InvalidDataError, match="feature rows"):
        method.forget_downdate(model, None, src.subset(torch.arange(5)), cfg)
    res = method.forget(model, src.subset(torch.arange(5, 80)), cfg, removed=src.subset(torch.arange(5)))
    assert res.path == "gram" and model.fitted_gram.F is not None and model.fitted_gram.n == 75
