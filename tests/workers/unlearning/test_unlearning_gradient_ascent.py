"""``gradient_ascent`` against an independent float64 numpy oracle (DESIGN §14.2, issue 13).

The oracle below is written from the paper's formulas, not from the method's code: full-batch
gradient descent on the mean logistic loss with its own dual accounting, the literal ascent step
θ + β∇ℓ with β = λ_r/|ℓ'|, the KKT criteria, and retraining from scratch on D_r. The data is where
the theory applies: d ≫ n and nearly orthogonal points."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from workers.unlearning import ConfigError, InvalidDataError, TensorSource, get_method
from workers.unlearning.methods.base import ModelSpec

METHOD = get_method("gradient_ascent")
N, D, HIDDEN = 10, 1000, 20


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend on a shared machine
    yield
    torch.set_num_threads(before)


def nearly_orthogonal(n=N, d=D, mix=0.002, seed=1):
    """Unit vectors with |⟨x_i, x_j⟩| ~ 1e-4 and alternating labels."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, n)))
    x = q.T + mix * rng.normal(size=(n, d)) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.arange(n) % 2


# ----------------------------------------------------------------------------- the numpy oracle
def net_np(theta, x, v):
    """(outputs, per-sample gradients as flat rows) of N(x; θ): linear if v is None, else Σ v_j relu(w_jᵀx)."""
    if v is None:
        return x @ theta, x.copy()
    w = theta.reshape(len(v), -1)
    pre = x @ w.T  # (n, m)
    out = np.maximum(pre, 0.0) @ v
    grads = ((pre > 0) * v)[:, :, None] * x[:, None, :]  # (n, m, d)
    return out, grads.reshape(len(x), -1)


def gd_np(x, y01, theta0, v, steps, lr):
    """θ_{t+1} = θ_t − η·(1/n)Σ ℓ'(q_i) y_i ∇N_i, and λ_i += (η/n)·|ℓ'(q_i)|, ℓ'(q) = −1/(1+e^q)."""
    y = 2.0 * y01 - 1.0
    theta, lam, n = theta0.copy(), np.zeros(len(y)), len(y)
    for _ in range(steps):
        out, g = net_np(theta, x, v)
        dl = -1.0 / (1.0 + np.exp(y * out))
        theta = theta - lr / n * (dl * y) @ g
        lam += lr / n * np.abs(dl)
    return theta, lam


def ascent_np(theta, x_r, y01_r, lam_r, v):
    """Successive literal steps θ ← θ + β∇_θ ℓ(y_r N(x_r; θ)), β = λ_r/|ℓ'(y_r N(x_r; θ))|."""
    for xr, yr, lr_ in zip(x_r, 2.0 * y01_r - 1.0, lam_r, strict=True):
        out, g = net_np(theta, xr[None], v)
        dl = -1.0 / (1.0 + np.exp(yr * out[0]))
        theta = theta + lr_ / abs(dl) * (dl * yr * g[0])
    return theta


def kkt_np(theta, x, y01, lam, v):
    y = 2.0 * y01 - 1.0
    out, g = net_np(theta, x, v)
    q = y * out
    gamma = q.min()  # θ/γ has normalised margin 1; with γ ≤ 0 no rescaling is feasible
    return {"stationarity": np.linalg.norm(theta - (lam * y) @ g) / np.linalg.norm(theta),
            "complementary_slackness": np.max(lam / gamma * (q / gamma - 1.0)) if gamma > 0 else np.inf,
            "min_margin": gamma / np.linalg.norm(theta), "feasible": float(gamma > 0)}


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# ----------------------------------------------------------------------------- helpers
ARCHS = {"linear": {"in_features": D}, "two_layer_relu": {"in_features": D, "hidden": HIDDEN}}


def trained(arch, x, y, ids, cfg):
    model = METHOD.build(ModelSpec(arch, ARCHS[arch]), cfg)
    result = METHOD.train(model, TensorSource(x, y, chunk_size=4, ids=ids), cfg)
    return model, result


def output_layer(model):
    return None if model.architecture == "linear" else model.network.output.numpy()


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_duals_match_an_independent_training_loop(arch):
    x, y = nearly_orthogonal()
    ids = np.arange(50, 50 + N)[::-1].copy()  # not sorted: the kept duals follow the ids, not the rows
    cfg = METHOD.config_cls(epochs=300, lr=2.0)
    model0 = METHOD.build(ModelSpec(arch, ARCHS[arch]), cfg)
    theta0 = model0.theta().numpy()
    model, result = trained(arch, x, y, ids, cfg)
    theta, lam = gd_np(x, y, theta0, output_layer(model), cfg.epochs, cfg.lr)
    np.testing.assert_allclose(model.theta().numpy(), theta, rtol=1e-9, atol=1e-12)
    order = np.argsort(ids)
    assert model.ids.tolist() == ids[order].tolist()
    np.testing.assert_allclose(model.duals.numpy(), lam[order], rtol=1e-10)
    if arch == "linear":  # from θ₀ = 0: θ = Σ λ_i y_i x_i exactly
        assert np.linalg.norm(theta0) == 0.0 and result.figures["stationarity"] < 1e-12
    assert result.operation == "fit" and METHOD.bound(result, cfg).guarantee == "exact"


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_ascent_step_is_the_literal_formula_and_updates_the_duals(arch):
    x, y = nearly_orthogonal()
    ids = np.arange(N)
    cfg = METHOD.config_cls(epochs=300, lr=2.0)
    model, _ = trained(arch, x, y, ids, cfg)
    theta, lam = model.theta().numpy(), model.duals.numpy().copy()
    gone = [7, 2]
    keep = np.setdiff1d(ids, gone)
    fresh = np.linspace(-1, 1, D)[None] / np.sqrt(D / 3)  # a sample ingested after training: λ = 0
    x_r = np.concatenate([x[keep], fresh])
    retained = TensorSource(x_r, np.concatenate([y[keep], [1]]), chunk_size=4, ids=np.concatenate([keep, [99]]))
    removed = TensorSource(x[gone], y[gone], ids=np.array(gone))
    res = METHOD.forget(model, retained, cfg, removed=removed)
    expect = ascent_np(theta, x[[2, 7]], y[[2, 7]], lam[[2, 7]], output_layer(model))  # by id
    np.testing.assert_allclose(model.theta().numpy(), expect, rtol=1e-9, atol=1e-12)
    assert model.ids.tolist() == [*keep.tolist(), 99]
    np.testing.assert_allclose(model.duals.numpy(), [*lam[keep], 0.0], rtol=0, atol=0)
    # the figures logged with the version are the oracle's KKT criteria on D_r
    fig = kkt_np(expect, x_r, retained.y.numpy(), model.duals.numpy(), output_layer(model))
    for k, val in fig.items():
        assert res.figures[k] == pytest.approx(val, rel=1e-8, abs=1e-12), k
    bound = METHOD.bound(res, cfg)
    assert bound.guarantee == "heuristic" and bound.extra == {"kkt": res.figures} and res.iterations == 2
    # forgetting again with nothing new gone is a no-op
    before = model.theta().clone()
    assert METHOD.forget(model, retained, cfg).iterations == 0 and torch.equal(model.theta(), before)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_kkt_after_the_step_against_before_it_and_against_retraining(arch):
    x, y = nearly_orthogonal(seed=3)
    ids = np.arange(N)
    cfg = METHOD.config_cls(epochs=500, lr=2.0)
    model, fit = trained(arch, x, y, ids, cfg)
    # the theorem's premise: training reached an approximate KKT point of D (seed 1 of this
    # generator does not for the ReLU net, stationarity 0.37 on D, and the step inherits it:
    # 0.46 on D_r after it against 0.37 retrained; see NOTES-issue-13.md)
    assert fit.figures["stationarity"] <= 0.05
    v = output_layer(model)
    theta, lam = model.theta().numpy(), model.duals.numpy().copy()
    keep = np.arange(2, N)
    METHOD.forget(model, TensorSource(x[keep], y[keep], ids=keep), cfg, removed=TensorSource(x[:2], y[:2], ids=ids[:2]))
    after_theta = model.theta().numpy()
    # the oracle: retrained from scratch on D_r by the numpy loop, from the same start
    theta0 = METHOD.build(ModelSpec(arch, ARCHS[arch]), cfg).theta().numpy()
    retrained, lam_rt = gd_np(x[keep], y[keep], theta0, v, cfg.epochs, cfg.lr)

    before = kkt_np(theta, x[keep], y[keep], lam[keep], v)
    after = kkt_np(after_theta, x[keep], y[keep], lam[keep], v)
    oracle = kkt_np(retrained, x[keep], y[keep], lam_rt, v)
    # stationarity: before the step the removed samples' terms dominate the residual on D_r
    assert before["stationarity"] > 0.3
    assert after["stationarity"] <= 0.1 * before["stationarity"]
    assert after["stationarity"] <= 1.5 * oracle["stationarity"] + 1e-10
    assert after["feasible"] == 1.0 and after["min_margin"] == pytest.approx(oracle["min_margin"], rel=0.05)
    assert after["min_margin"] > 1.05 * before["min_margin"]  # the removed samples no longer pin the margin
    assert after["complementary_slackness"] <= 1.5 * oracle["complementary_slackness"] + 0.05
    # the direction: θ⁻ is close to the retrained one, much closer than θ was
    cos_after, cos_before = cosine(after_theta, retrained), cosine(theta, retrained)
    assert cos_after >= 0.999 and cos_after - cos_before >= 0.05


def test_refusals():
    cfg = METHOD.config_cls(epochs=5)
    x, y = nearly_orthogonal(n=6, d=20)
    with pytest.raises(ConfigError, match="linear, two_layer_relu"):
        METHOD.build(ModelSpec("mlp", {"in_features": 20, "num_classes": 2}), cfg)
    model = METHOD.build(ModelSpec("linear", {"in_features": 20}), cfg)
    with pytest.raises(InvalidDataError, match="binary labels|labels must lie"):
        METHOD.train(model, TensorSource(x, np.arange(6) % 3), cfg)
    METHOD.train(model, TensorSource(x, y, ids=np.arange(6)), cfg)
    with pytest.raises(InvalidDataError, match="inputs"):  # sample 0 left D_r, but its inputs were not given
        METHOD.forget(model, TensorSource(x[1:], y[1:], ids=np.arange(1, 6)), cfg)
    for bad, words in [({"optimizer": "adam"}, "optimizer"), ({"momentum": 0.9}, "momentum"), ({"weight_decay": 1e-4}, "weight decay"),
                       ({"checkpoint": "s3://x"}, "carry no dual"), ({"lr": 0}, "lr"), ({"epochs": 0}, "epochs"), ({"batch_size": 32}, "full-batch")]:
        with pytest.raises(ValidationError, match=words):
            METHOD.config_cls.model_validate(bad)
    assert METHOD.config_cls.model_problems("linear", 2) == []
    fields = [f for f, _ in METHOD.config_cls.model_problems("mlp", 10)]
    assert fields == ["architecture", "num_classes"]


def test_private_state_round_trips_and_the_served_file_holds_no_duals():
    x, y = nearly_orthogonal(n=6, d=40)
    cfg = METHOD.config_cls(epochs=50)
    model = METHOD.build(ModelSpec("two_layer_relu", {"in_features": 40, "hidden": 4}), cfg)
    METHOD.train(model, TensorSource(x, y, ids=np.arange(6)), cfg)
    blobs = METHOD.save_private(model)
    assert set(blobs) == set(METHOD.private_artifacts)
    again = METHOD.load_private(blobs, cfg)
    assert torch.equal(again.theta(), model.theta()) and torch.equal(again.duals, model.duals) and torch.equal(again.ids, model.ids)
    assert torch.equal(again.network.output, model.network.output)
    from safetensors.torch import load

    served = load(METHOD.serve_bytes(model, METHOD.release(model, cfg), {"model": "m"}))
    assert set(served) == {"hidden.weight", "output"} and torch.equal(served["hidden.weight"], model.network.hidden.weight.detach())
