"""The math of certified removal for a linear head (Guo, Goldstein, Hannun, van der Maaten, ICML 2020).

Features are scaled per sample to ‖x‖ ≤ 1 (:func:`scale_features`). Each of the C one-vs-rest heads
(targets t = ±1) minimises, over the n samples it was trained on,

    L(w) = Σ ℓ(wᵀx_i, t_i) + (λn/2)‖w‖² + bᵀw,      b ~ N(0, s²I) drawn once, kept private.

Removing m samples is one Newton step on the retained objective L_r (regulariser λ(n−m), same b):

    w⁻ = w − H_r⁻¹ ∇L_r(w)          (= w + H_r⁻¹Δ, Δ = mλw + Σ_removed ∇ℓ, when ∇L(w) = 0)

and the certificate needs an upper bound on ‖∇L_r(w⁻)‖. With d̂ = w − w⁻ (whatever the solver
returned) and ℓ'' γ-Lipschitz (γ = 1/4 logistic, 0 least squares), Taylor's theorem gives

    ∇L_r(w⁻) = [∇L_r(w) − H_r(w) d̂] + R,     ‖R‖ ≤ γ‖X‖₂‖d̂‖‖X d̂‖      (Guo et al., Corollary 1)

The bracket (the linear solve's residual) is *computed*, with a rigorous floating-point margin, so
the bound covers the training residual left in ∇L(w) and the solver's rounding, not only R.
β sums the heads' bounds over every removal since the last (re)training, plus the training
residual; ε_spent = c·β/s with c = √(2 ln(1.5/δ)).

Everything is float64 torch. Floating-point margins (Higham, *Accuracy and Stability*, §3.1):
a float64 sum of k products, in any order, is within γ_k·Σ|terms| of the exact sum, γ_k = ku/(1−ku),
u = 2⁻⁵³; first-order terms are doubled (``ERR_SAFETY``) to cover the dropped O(u²) terms, the
few-ulp error of exp/log1p and the rounding of the margin arithmetic itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from workers.unlearning.errors import InvalidDataError
from workers.unlearning.objective import ERR_SAFETY, UNIT_ROUNDOFF, gamma

Loss = Literal["logistic", "least_squares"]
GAMMA = {"logistic": 0.25, "least_squares": 0.0}  # Lipschitz constant of ℓ'' (Guo et al.: 1/4 logistic)
EXTRA_ROUNDINGS = 32  # roundings per term beyond the sums: products, exp/log1p, scaling, the step's subtraction
F64 = torch.float64


def scale_features(phi: torch.Tensor) -> torch.Tensor:
    """φ / max(1, ‖φ‖) per row: every sample has norm ≤ 1, fixed per sample (never by the set's max,
    which a removal would change)."""
    phi = phi.to(F64)
    return phi / torch.linalg.vector_norm(phi, dim=1, keepdim=True).clamp_min(1.0)


def one_vs_rest(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(n, C) targets: +1 for the sample's class, −1 for the others."""
    t = -torch.ones(len(y), num_classes, dtype=F64)
    t[torch.arange(len(y)), y.long()] = 1.0
    return t


def derivatives(z: torch.Tensor, t: torch.Tensor, loss: Loss, value: bool = True) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """ℓ (None unless ``value``), ℓ' and ℓ'' (w.r.t. z) elementwise."""
    if loss == "logistic":
        m = -t * z  # ℓ = log(1 + e^m), stable form
        ell = torch.clamp_min(m, 0) + torch.log1p(torch.exp(-m.abs())) if value else None
        return ell, -t * torch.sigmoid(m), torch.sigmoid(z) * torch.sigmoid(-z)
    if loss == "least_squares":
        r = z - t
        return 0.5 * r * r if value else None, r, torch.ones_like(z)
    raise InvalidDataError(f"unknown loss {loss!r}")


def objective(x: torch.Tensor, t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lam: float, loss: Loss) -> torch.Tensor:
    """L per head, (C,): Σℓ + (λn/2)‖w‖² + bᵀw."""
    lam_n = lam * len(x)
    value, _, _ = derivatives(x @ w.T, t, loss)
    return value.sum(0) + 0.5 * lam_n * (w * w).sum(1) + (b * w).sum(1)


def gradient(x: torch.Tensor, t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lam: float, loss: Loss) -> tuple[torch.Tensor, torch.Tensor]:
    """∇L per head, (C, d), and a rigorous elementwise-sum bound on its rounding error, (C,)."""
    n, d = x.shape
    lam_n = lam * n
    _, d1, _ = derivatives(x @ w.T, t, loss, value=False)
    g = d1.T @ x + lam_n * w + b
    mag = d1.abs().T @ x.abs() + lam_n * w.abs() + b.abs()
    err = ERR_SAFETY * gamma(n + d + EXTRA_ROUNDINGS) * torch.linalg.vector_norm(mag, dim=1)
    return g, err


def certified_gradient_norm(x, t, w, b, lam: float, loss: Loss) -> torch.Tensor:
    """Per head, an upper bound on the exact ‖∇L(w)‖ for these float64 inputs."""
    g, err = gradient(x, t, w, b, lam, loss)
    return torch.linalg.vector_norm(g, dim=1) * (1 + 2 * gamma(x.shape[1] + 1)) + err


def hessians(x: torch.Tensor, d2: torch.Tensor, lam_n: float) -> torch.Tensor:
    """(C, d, d): Xᵀ diag(ℓ''_c) X + λn I per head."""
    h = (x.T.unsqueeze(0) * d2.T.unsqueeze(1)) @ x  # (C, d, n) @ (n, d): one batched GEMM
    h.diagonal(dim1=1, dim2=2).add_(lam_n)
    return h


def _newton_direction(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    chol = torch.linalg.cholesky(h)
    return torch.cholesky_solve(g.unsqueeze(-1), chol).squeeze(-1)


@dataclass
class FitInfo:
    iterations: int
    residual: float  # Σ over heads of the certified ‖∇L(w)‖ (the training residual, counted in β)
    seconds: float = 0.0


def fit(x: torch.Tensor, t: torch.Tensor, b: torch.Tensor, lam: float, loss: Loss, max_iter: int = 100) -> tuple[torch.Tensor, FitInfo]:
    """The minimiser of L per head, to float64 precision: damped Newton (backtracking on L) until
    the gradient stops shrinking or reaches its rounding floor."""
    import time

    start = time.perf_counter()
    n, d = x.shape
    if n == 0:
        raise InvalidDataError("the training set is empty")
    x, t, b = x.to(F64), t.to(F64), b.to(F64)
    lam_n = lam * n
    w = torch.zeros(t.shape[1], d, dtype=F64)
    best = math.inf
    it = 0
    for it in range(1, max_iter + 1):
        g, err = gradient(x, t, w, b, lam, loss)
        gn = float(torch.linalg.vector_norm(g))
        if gn <= 4 * float(torch.linalg.vector_norm(err)) or (gn >= 0.5 * best and gn < 1e-6 * (1 + lam_n)):
            break  # at the rounding floor, or no longer improving once tiny
        best = min(best, gn)
        _, _, d2 = derivatives(x @ w.T, t, loss, value=False)
        step = _newton_direction(hessians(x, d2, lam_n), g)
        if loss == "least_squares":
            w = w - step
            continue
        f0 = objective(x, t, w, b, lam, loss)
        alpha = torch.ones(t.shape[1], 1, dtype=F64)
        for _ in range(60):  # per-head backtracking (Armijo); a full step is taken near the optimum
            trial = w - alpha * step
            ok = objective(x, t, trial, b, lam, loss) <= f0 - 1e-4 * alpha.squeeze(1) * (g * step).sum(1) + 1e-12 * f0.abs()
            if bool(ok.all()):
                break
            alpha = torch.where(ok.unsqueeze(1), alpha, 0.5 * alpha)
        w = w - alpha * step
    residual = float(certified_gradient_norm(x, t, w, b, lam, loss).sum())
    return w, FitInfo(iterations=it, residual=residual, seconds=time.perf_counter() - start)


def spectral_norm_upper(x: torch.Tensor) -> float:
    """A rigorous upper bound on ‖X‖₂ = √λ_max(XᵀX), from the d×d Gram by a symmetric eigensolver.

    * the computed Gram Ĝ = fl(XᵀX) satisfies |Ĝ − G| ≤ γ_n |X|ᵀ|X| elementwise, so
      ‖Ĝ − G‖₂ ≤ ‖Ĝ − G‖_F ≤ γ_n ‖ |X|ᵀ|X| ‖_F ≤ γ_n ‖X‖_F² (Higham (3.4)-(3.5));
    * LAPACK's symmetric eigensolver is backward stable: λ̂_max is an exact eigenvalue of Ĝ + E with
      ‖E‖₂ ≤ p(d)·u·‖Ĝ‖₂; we take p(d) = 4d² (the textbook bounds are O(d)) and ‖Ĝ‖₂ ≤ ‖Ĝ‖_F;
    * Weyl: λ_max(G) ≤ λ̂_max + ‖E‖₂ + ‖Ĝ − G‖₂. The margins are doubled (``ERR_SAFETY``) and the
      square root rounded up.

    (Power iteration alone gives a *lower* bound: it converges to λ_max from below.)"""
    n, d = x.shape
    if n == 0:
        return 0.0
    x = x.to(F64)
    g = x.T @ x
    lam_max = float(torch.linalg.eigvalsh(g)[-1])
    frob_x = float((x * x).sum())
    margin = gamma(n + 2) * frob_x + gamma(4 * d * d + 2) * float(torch.linalg.matrix_norm(g))
    return math.sqrt(max(lam_max, 0.0) + ERR_SAFETY * margin) * (1 + 4 * UNIT_ROUNDOFF)


@dataclass
class Removal:
    w: torch.Tensor  # w⁻, (C, d)
    bound: float  # Σ over heads of the certified bound on ‖∇L_r(w⁻)‖
    linear_residual: float  # Σ heads ‖∇L_r(w) − H_r d̂‖ + its rounding margin
    taylor: float  # Σ heads γ‖X‖₂‖d̂‖‖Xd̂‖
    x_norm: float  # the upper bound of ‖X_r‖₂ used
    step_norm: float  # ‖d̂‖_F
    seconds: float = 0.0


def remove(x_r: torch.Tensor, t_r: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lam: float, loss: Loss) -> Removal:
    """One Newton step on the retained samples (regulariser λ·len(x_r)) and its certified bound."""
    import time

    start = time.perf_counter()
    n, d = x_r.shape
    if n == 0:
        raise InvalidDataError("the retained set would be empty")
    x, t, w, b = x_r.to(F64), t_r.to(F64), w.to(F64), b.to(F64)
    lam_n = lam * n
    z = x @ w.T
    _, d1, d2 = derivatives(z, t, loss, value=False)
    g = d1.T @ x + lam_n * w + b
    w_new = w - _newton_direction(hessians(x, d2, lam_n), g)
    step = w - w_new  # d̂: what was actually applied (its rounding is inside the margins below)
    xs = x @ step.T  # (n, C): X d̂ per head
    # ∇L_r(w) − H_r(w) d̂ = Xᵀ(ℓ' − ℓ''⊙Xd̂) + λ(n−m)(w − d̂) + b, evaluated as one expression
    lin = (d1 - d2 * xs).T @ x + lam_n * (w - step) + b
    mag = (d1.abs() + d2 * (x.abs() @ step.abs().T)).T @ x.abs() + lam_n * (w.abs() + step.abs()) + b.abs()
    lin_err = ERR_SAFETY * gamma(n + 2 * d + EXTRA_ROUNDINGS) * torch.linalg.vector_norm(mag, dim=1)
    lin_norm = torch.linalg.vector_norm(lin, dim=1) * (1 + 2 * gamma(d + 1)) + lin_err
    x_norm = spectral_norm_upper(x)
    round_up = 1 + 2 * ERR_SAFETY * gamma(n + d + EXTRA_ROUNDINGS)
    taylor = GAMMA[loss] * x_norm * torch.linalg.vector_norm(step, dim=1) * torch.linalg.vector_norm(xs, dim=0) * round_up
    per_head = lin_norm + taylor
    return Removal(w=w_new, bound=float(per_head.sum()), linear_residual=float(lin_norm.sum()), taylor=float(taylor.sum()),
                   x_norm=x_norm, step_norm=float(torch.linalg.vector_norm(step)), seconds=time.perf_counter() - start)


def draw_perturbation(shape: tuple[int, ...], s: float) -> torch.Tensor:
    """b ~ N(0, s²I) from a fresh OS-random seed that is never kept (the caller keeps b privately)."""
    import secrets

    gen = torch.Generator().manual_seed(secrets.randbits(63))
    return s * torch.randn(shape, generator=gen, dtype=F64)


@dataclass(frozen=True)
class Budget:
    """ε_spent = c·β/s, c = √(2 ln(1.5/δ)) (Guo et al., Theorem 3); the release is (ε_spent, δ)-close
    to a model retrained without the removed data, per release."""

    epsilon: float
    delta: float
    s: float

    def __post_init__(self) -> None:
        if not (self.epsilon > 0 and 0 < self.delta < 1 and self.s > 0):
            raise InvalidDataError(f"need ε > 0, 0 < δ < 1, s > 0; got ε={self.epsilon}, δ={self.delta}, s={self.s}")

    @property
    def c(self) -> float:
        return math.sqrt(2.0 * math.log(1.5 / self.delta))

    def spent(self, beta: float) -> float:
        return self.c * beta / self.s

    def left(self, beta: float) -> float:
        return self.epsilon - self.spent(beta)

    def exceeded(self, beta: float) -> bool:
        """Whether a release with accumulated β would cross the budget (then: retrain)."""
        return not (self.spent(beta) <= self.epsilon)


BUDGET_EXHAUSTED = "budget exhausted"


@dataclass
class HeadState:
    """A trained head and its ledger: β = the training residual + every removal's bound since."""

    w: torch.Tensor  # (C, d), released
    b: torch.Tensor  # (C, d), private: never served or logged
    loss: Loss
    lam: float
    n: int  # samples the current w answers for
    beta: float
    train_residual: float
    removals: int = 0  # removal steps since the last (re)training
    retrains: int = 0


def train_head(x: torch.Tensor, t: torch.Tensor, s: float, lam: float, loss: Loss, max_iter: int = 100,
               retrains: int = 0) -> tuple[HeadState, FitInfo]:
    """Train from scratch with a fresh b; β starts at the training residual."""
    b = draw_perturbation((t.shape[1], x.shape[1]), s)
    w, info = fit(x, t, b, lam, loss, max_iter)
    return HeadState(w, b, loss, lam, len(x), info.residual, info.residual, 0, retrains), info


def remove_or_retrain(state: HeadState, x_r: torch.Tensor, t_r: torch.Tensor, budget: Budget,
                      max_iter: int = 100) -> tuple[HeadState, Removal | FitInfo, str]:
    """One Newton removal down to ``x_r``; when its bound would push ε_spent past the budget, the
    head is retrained on ``x_r`` with a fresh b instead (reason ``"budget exhausted"``)."""
    r = remove(x_r, t_r, state.w, state.b, state.lam, state.loss)
    if not budget.exceeded(state.beta + r.bound):
        new = HeadState(r.w, state.b, state.loss, state.lam, len(x_r), state.beta + r.bound, state.train_residual,
                        state.removals + 1, state.retrains)
        return new, r, ""
    fresh, info = train_head(x_r, t_r, budget.s, state.lam, state.loss, max_iter, retrains=state.retrains + 1)
    if budget.exceeded(fresh.beta):
        raise InvalidDataError(f"even a fresh training leaves ε_spent = {budget.spent(fresh.beta):.3g} > ε = {budget.epsilon}: "
                               "raise s or ε")
    return fresh, info, BUDGET_EXHAUSTED
