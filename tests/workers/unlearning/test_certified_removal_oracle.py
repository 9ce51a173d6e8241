"""Oracle tests of certified removal's math (Guo et al., ICML 2020; issue 15, part 2).

The oracles are independent of the code under test: numpy float64 Newton / dense solves for the
exact retrain with the same b, and mpmath (50 digits) for the true gradient norm at w⁻ and the
true ‖X‖₂."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch

from workers.unlearning.errors import InvalidDataError
from workers.unlearning.methods.certified_removal import head as H

mpmath.mp.dps = 50


def _problem(n: int, d: int, classes: int, seed: int, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, d, generator=g, dtype=torch.float64)
    x = H.scale_features(spread * centres[y] + torch.randn(n, d, generator=g, dtype=torch.float64))
    return x, y, H.one_vs_rest(y, classes)


def _b(shape: tuple[int, int], s: float, seed: int) -> torch.Tensor:
    """A seeded perturbation: the tests are reproducible (the method draws b from OS randomness)."""
    return s * torch.randn(shape, generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)


def _np_retrain(x: np.ndarray, t: np.ndarray, b: np.ndarray, lam: float, loss: str) -> np.ndarray:
    """Independent oracle: per head, plain Newton in numpy (dense solve) from 0 to machine precision."""
    n, d = x.shape
    out = np.zeros((t.shape[1], d))
    for c in range(t.shape[1]):
        w = np.zeros(d)
        for _ in range(100):
            z = x @ w
            if loss == "logistic":
                p = 1.0 / (1.0 + np.exp(t[:, c] * z))  # σ(−tz)
                grad = x.T @ (-t[:, c] * p) + lam * n * w + b[c]
                curv = p * (1 - p)
            else:
                grad = x.T @ (z - t[:, c]) + lam * n * w + b[c]
                curv = np.ones(n)
            hess = (x * curv[:, None]).T @ x + lam * n * np.eye(d)
            step = np.linalg.solve(hess, grad)
            w = w - step
            if np.linalg.norm(step) < 1e-15 * (1 + np.linalg.norm(w)):
                break
        out[c] = w
    return out


def _mp_grad_norms(x: np.ndarray, t: np.ndarray, w: np.ndarray, b: np.ndarray, lam: float, loss: str) -> list:
    """‖∇L(w)‖ per head in 50-digit arithmetic, from the float64 inputs taken as exact."""
    n, d = x.shape
    norms = []
    for c in range(t.shape[1]):
        g = [mpmath.mpf(lam) * n * mpmath.mpf(w[c, j]) + mpmath.mpf(b[c, j]) for j in range(d)]
        for i in range(n):
            z = mpmath.fsum(mpmath.mpf(x[i, j]) * mpmath.mpf(w[c, j]) for j in range(d))
            ti = mpmath.mpf(t[i, c])
            dl = -ti / (1 + mpmath.exp(ti * z)) if loss == "logistic" else z - ti
            for j in range(d):
                g[j] += dl * mpmath.mpf(x[i, j])
        norms.append(mpmath.sqrt(mpmath.fsum(v * v for v in g)))
    return norms


@pytest.mark.parametrize("loss", ["logistic", "least_squares"])
def test_training_reaches_the_perturbed_minimiser(loss):
    x, _, t = _problem(80, 5, 3, seed=1)
    b = _b((3, 5), 0.5, 1)
    w, info = H.fit(x, t, b, 1e-2, loss)
    oracle = _np_retrain(x.numpy(), t.numpy(), b.numpy(), 1e-2, loss)
    assert np.allclose(w.numpy(), oracle, rtol=0, atol=1e-12)
    true = sum(_mp_grad_norms(x.numpy(), t.numpy(), w.numpy(), b.numpy(), 1e-2, loss))
    assert info.residual >= float(true)  # the certified training residual covers the true one
    assert info.residual < 1e-9


@pytest.mark.parametrize("loss,removed", [("logistic", 3), ("logistic", 30), ("least_squares", 10)])
def test_removal_against_an_exact_retrain_with_the_same_b(loss, removed):
    n, lam = 60, 1e-2
    x, _, t = _problem(n, 4, 2, seed=2)
    b = _b((2, 4), 0.3, removed)
    w, _ = H.fit(x, t, b, lam, loss)
    keep = torch.arange(n) >= removed
    r = H.remove(x[keep], t[keep], w, b, lam, loss)
    oracle = _np_retrain(x[keep].numpy(), t[keep].numpy(), b.numpy(), lam, loss)
    dist = np.linalg.norm(r.w.numpy() - oracle, axis=1)
    # strong convexity (modulus λ(n−m)): ‖w⁻ − w*_r‖ ≤ ‖∇L_r(w⁻)‖ / (λ(n−m)) ≤ bound / (λ(n−m))
    assert dist.sum() <= r.bound / (lam * (n - removed)) * (1 + 1e-9) + 1e-13
    if loss == "least_squares":
        assert r.taylor == 0.0 and np.allclose(r.w.numpy(), oracle, rtol=0, atol=1e-12)  # exact removal
        assert r.bound < 1e-10
    else:
        assert r.taylor > 0 and dist.max() > 1e-10  # logistic: a real, certified approximation
        assert np.linalg.norm(r.w.numpy() - oracle) < np.linalg.norm(w.numpy() - oracle)  # the step moved toward the retrain


@pytest.mark.parametrize("loss,removed,seed", [("logistic", 1, 3), ("logistic", 12, 4), ("logistic", 20, 5), ("least_squares", 6, 6)])
def test_bound_is_never_below_the_true_gradient_norm_at_w_minus(loss, removed, seed):
    n, lam = 24, 1e-3
    x, _, t = _problem(n, 3, 3, seed=seed, spread=2.0)
    b = _b((3, 3), 0.2, seed)
    w, _ = H.fit(x, t, b, lam, loss)
    keep = torch.arange(n) >= removed
    r = H.remove(x[keep], t[keep], w, b, lam, loss)
    true = _mp_grad_norms(x[keep].numpy(), t[keep].numpy(), r.w.numpy(), b.numpy(), lam, loss)
    assert r.bound >= float(mpmath.fsum(true))
    # and it is the data-dependent bound, not a vacuous one (removing 20 of 24 is the loosest case)
    assert r.bound <= 1e4 * float(mpmath.fsum(true)) + 1e-9


def test_spectral_norm_upper_bound_is_rigorous_and_tight():
    g = torch.Generator().manual_seed(7)
    for x in (torch.randn(30, 4, generator=g, dtype=torch.float64),
              H.scale_features(torch.randn(200, 6, generator=g, dtype=torch.float64) * torch.tensor([1e4, 1, 1, 1, 1e-6, 1.0])),
              torch.ones(50, 3, dtype=torch.float64) / 3 ** 0.5 + 1e-9 * torch.randn(50, 3, generator=g, dtype=torch.float64)):
        m = mpmath.matrix(x.numpy().tolist())
        true = max(mpmath.svd_r(m, compute_uv=False))
        upper = H.spectral_norm_upper(x)
        assert upper >= float(true) and upper >= float(torch.linalg.matrix_norm(x, ord=2))
        assert upper <= float(true) * (1 + 1e-9)


def test_beta_adds_up_and_the_retrain_triggers_exactly_when_the_budget_would_be_crossed():
    n, lam, s = 120, 1e-2, 1.0
    x, _, t = _problem(n, 4, 2, seed=8)
    state, info = H.train_head(x, t, s, lam, "logistic")
    assert state.beta == info.residual
    # replay independently: the bounds of the successive removals (5 samples each), same b
    w, bounds = state.w, []
    for k in range(1, 7):
        r = H.remove(x[5 * k:], t[5 * k:], w, state.b, lam, "logistic")
        w = r.w
        bounds.append(r.bound)
    cum = [state.beta + math.fsum(bounds[:k]) for k in range(1, 7)]
    # a budget that three removals fit in and a fourth would cross
    budget = H.Budget(epsilon=H.Budget(1.0, 1e-5, s).spent(0.5 * (cum[2] + cum[3])), delta=1e-5, s=s)
    spent = []
    for k in range(1, 5):
        state, step, reason = H.remove_or_retrain(state, x[5 * k:], t[5 * k:], budget)
        spent.append((budget.spent(state.beta), reason))
        if k <= 3:
            assert reason == "" and state.removals == k and state.beta == pytest.approx(cum[k - 1], rel=1e-12)
            assert isinstance(step, H.Removal) and step.bound == pytest.approx(bounds[k - 1], rel=1e-9)
    assert [r for _, r in spent] == ["", "", "", H.BUDGET_EXHAUSTED]
    assert spent[0][0] < spent[1][0] < spent[2][0] <= budget.epsilon  # ε_spent grows, within the budget
    # the retrain: a fresh b, β reset to the new training residual, the retained data only
    assert state.removals == 0 and state.retrains == 1 and state.beta == state.train_residual < 1e-8
    assert state.n == n - 20
    oracle = _np_retrain(x[20:].numpy(), t[20:].numpy(), state.b.numpy(), lam, "logistic")
    assert np.allclose(state.w.numpy(), oracle, rtol=0, atol=1e-12)


def test_budget_arithmetic_and_bad_settings():
    b = H.Budget(2.0, 1e-4, 0.5)
    c = math.sqrt(2 * math.log(1.5 / 1e-4))
    assert b.c == pytest.approx(c) and b.spent(0.1) == pytest.approx(c * 0.1 / 0.5) and b.left(0.1) == pytest.approx(2.0 - c * 0.2)
    assert not b.exceeded(2.0 * 0.5 / c * (1 - 1e-12)) and b.exceeded(2.0 * 0.5 / c * (1 + 1e-12))
    for eps, delta, s in ((0, 0.1, 1), (1, 0, 1), (1, 1, 1), (1, 0.1, 0), (-1, 0.1, 1)):
        with pytest.raises(InvalidDataError):
            H.Budget(eps, delta, s)


def test_features_are_scaled_per_sample_not_by_the_set():
    phi = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    x = H.scale_features(phi)
    assert torch.allclose(x, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]], dtype=torch.float64))
    assert torch.equal(H.scale_features(phi[1:]), x[1:])  # removing the largest sample changes no other row
