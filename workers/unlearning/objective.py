"""The quadratic objective of DESIGN §6.2, streamed in chunks, and its exact minimiser.

For a sample set D with N = |D| and targets t_i = κ·onehot(y_i):

    L_D(w)  = 1/(2N) Σ ‖f_ML(x_i; w) − t_i‖² + (μ/2)‖w‖²
    ∇L_D(w) = 1/N Σ J_iᵀ (f_ML(x_i; w) − t_i) + μ w
    H_D v   = 1/N Σ J_iᵀ J_i v + μ v

The same three functions serve fit, forget, retrain and the bound: one convention everywhere.
Every chunk is a JVP (forward mode) and, for gradients and HVPs, one VJP. Reductions and the
CG scalars are float64 whatever the pass dtype.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from workers.unlearning.data import TensorSource
from workers.unlearning.errors import InvalidDataError
from workers.unlearning import sequential
from workers.unlearning.linearized import MixedLinearModel
from workers.unlearning.sequential import SequentialProducts

Progress = Callable[[dict], None] | None

RELIABLE_DROP = 1e-2  # float32 CG: recompute the true residual in float64 at every 100-fold drop
MAX_FAST_STEPS = 8
CPU_SOLVE_MAX = 1024  # an affine head's (h+1)×(h+1) Newton system up to this size is solved on the CPU


@dataclass
class SolveResult:
    iterations: int = 0
    residual_norm: float = 0.0
    converged: bool = True
    seconds: float = 0.0
    newton_steps: int = 0
    n_samples: int = 0
    operation: str = "fit"  # fit | forget | zero | retrain: what produced the weights
    path: str = ""  # gram | explicit | generic: how the passes were run
    # a rigorous bound on |‖∇L(w)‖ − residual_norm| from the rounding of the Gram sums and of the
    # gradient's evaluation (Gram path; 0 elsewhere): the bound uses residual_norm + residual_error
    residual_error: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


UNIT_ROUNDOFF = 2.0**-53  # u of float64: fl(a ∘ b) = (a ∘ b)(1 + δ), |δ| ≤ u


def gamma(k: int) -> float:
    """Higham's γ_k = k·u / (1 − k·u): any float64 sum of k products Σ x_i y_i, in any order
    (blocked BLAS, FMA, chunk accumulation), is within γ_k · Σ |x_i y_i| of the exact sum."""
    ku = k * UNIT_ROUNDOFF
    if ku >= 0.01:  # never near for any data set this library can hold
        raise InvalidDataError(f"{k} terms: the floating-point error bound needs k·u < 0.01")
    return ku / (1.0 - ku)


# Every first-order error term below is multiplied by this: it covers the O(u²) terms the
# derivation drops and the rounding of the error arithmetic itself (all terms are < 1% of u·k).
ERR_SAFETY = 2.0


@dataclass
class GramState:
    """Sufficient statistics of L_D for an affine head: G = Σ aaᵀ, B = Σ r0 aᵀ, c0 = Σ‖r0‖², n
    (a = [φ(x), 1], r0 = f(x; w_c) − t). Sums, so sets add and subtract.

    The float64 sums are not exact: ``eG`` and ``eB`` are rigorous upper bounds on the Frobenius
    norms ‖Ĝ − G‖_F and ‖B̂ − B‖_F of the stored sums against the exact sums of the same
    float64 features (README, "The math, in one place": Higham's γ_n for the passes, plus one
    rounding u·‖result‖_F per subtraction or addition of states). A downdate that removes most
    of the set subtracts nearly equal sums; the result is small but its error is not, and
    :meth:`Objective.residual_error` carries that error into the bound.

    ``ids`` are the fitted set's sample ids, sorted (int64): a downdate may only remove ids
    that are in it, each once (a second removal of the same sample is refused).

    ``F`` (optional; rows aligned with ``ids``, on the CPU, in the prefix's dtype): the fitted
    samples' features exactly as they were summed. A prefix does not reproduce its outputs bit
    for bit across batch shapes (BLAS picks kernels and blockings by shape; float32 ~1e-8 here,
    more on a GPU; float64 too, by ~u·‖W‖‖x‖, which a cancellation in the prefix makes far larger
    than u·‖φ‖), and a downdate that subtracted *recomputed* features would leave an error in the
    sums that no rounding term covers (tests/workers/unlearning/test_unlearning_downdate_bound.py
    shows a float64 bound 383× too small that way). So the features are computed once per sample
    and kept, for every prefix precision: a downdate subtracts the kept rows, and the model's
    ``f_ML`` on its fitted set is defined by them (the evaluation of retained samples reuses them too)."""

    G: torch.Tensor
    B: torch.Tensor
    c0: float
    n: int
    eG: float = 0.0
    eB: float = 0.0
    ids: torch.Tensor | None = None
    F: torch.Tensor | None = None

    def __sub__(self, other: "GramState") -> "GramState":
        G, B = self.G - other.G, self.B - other.B
        eG, eB = _combined_error(self, other, G, B)
        ids, F = None, None
        if self.ids is not None and other.ids is not None:
            stay = ~torch.isin(self.ids, other.ids)
            ids = self.ids[stay]
            F = self.F[stay] if self.F is not None else None
        return GramState(G, B, self.c0 - other.c0, self.n - other.n, eG, eB, ids, F)

    def __add__(self, other: "GramState") -> "GramState":
        G, B = self.G + other.G, self.B + other.B
        eG, eB = _combined_error(self, other, G, B)
        ids, F = None, None
        if self.ids is not None and other.ids is not None:
            ids, order = torch.sort(torch.cat([self.ids, other.ids]))
            if self.F is not None and other.F is not None:
                F = torch.cat([self.F, other.F])[order]
        return GramState(G, B, self.c0 + other.c0, self.n + other.n, eG, eB, ids, F)

    def features_of(self, ids: torch.Tensor) -> torch.Tensor:
        """The kept feature rows of these ids (each must be in ``self.ids``)."""
        pos = torch.searchsorted(self.ids, ids.to(torch.int64).cpu())
        return self.F[pos]

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """For a private safetensors file next to the noise-free weights (it is user data)."""
        out = {"G": self.G.cpu(), "B": self.B.cpu(), "c0": torch.tensor([self.c0], dtype=torch.float64), "n": torch.tensor([self.n]),
               "err": torch.tensor([self.eG, self.eB], dtype=torch.float64)}
        if self.ids is not None:
            out["ids"] = self.ids.cpu().to(torch.int64).contiguous()
        if self.F is not None:
            out["F"] = self.F.cpu().contiguous()
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> "GramState":
        G, B, n = t["G"].to(device, torch.float64), t["B"].to(device, torch.float64), int(t["n"][0])
        if "err" in t:
            eG, eB = float(t["err"][0]), float(t["err"][1])
        else:  # sums kept before the error terms existed: one pass over n samples (no downdate was stored)
            eG, eB = _pass_error(n, G.shape[0], float(torch.trace(G)), float(t["c0"][0]))
        ids = t["ids"].to(torch.int64) if "ids" in t else None
        return cls(G, B, float(t["c0"][0]), n, eG, eB, ids, t.get("F"))


def _combined_error(a: "GramState", b: "GramState", G: torch.Tensor, B: torch.Tensor) -> tuple[float, float]:
    """Errors of Ĝ = fl(Ĝ_a ± Ĝ_b): the two stored errors add (triangle inequality) and the
    elementwise rounding adds ≤ u·‖Ĝ‖_F (2u covers the rounding of the computed norm); the
    factor 1 + 8u covers the rounding of these few additions. Not doubled per step, so ten
    chained forgets grow the error by addition, not by 2¹⁰."""
    u = UNIT_ROUNDOFF
    eG = (a.eG + b.eG + 2 * u * float(torch.linalg.norm(G))) * (1 + 8 * u)
    eB = (a.eB + b.eB + 2 * u * float(torch.linalg.norm(B))) * (1 + 8 * u)
    return eG, eB


def _pass_error(n: int, width: int, sum_a2: float, c0: float, depth: int | None = None) -> tuple[float, float]:
    """(eG, eB) of one streamed pass over n samples: ‖Ĝ − G‖_F ≤ γ_d Σ‖a_i‖² and
    ‖B̂ − B‖_F ≤ γ_d Σ‖r0_i‖‖a_i‖ ≤ γ_d √(c0 · Σ‖a_i‖²) (Cauchy–Schwarz); the computed Σ‖a_i‖²
    and c0 are themselves sums of nonnegative terms, rounded up by 1/(1 − γ_{n+width+2}).

    d bounds the number of roundings any one product a_ij·a_ik goes through: one for the
    product, at most k − 1 additions inside a chunk's matrix product of k rows (true of any
    summation tree, so of any BLAS blocking or FMA), and one per later chunk accumulation
    ``G += ...``: d = max_chunk + chunks + 1 (Higham, Accuracy and Stability, (3.4)–(3.5) with
    the per-term depth of the tree). Without the chunk layout, d = n + 1."""
    up = 1.0 / (1.0 - gamma(n + width + 2))
    s_a2, s_c0 = sum_a2 * up, c0 * up
    g = gamma(min(depth, n + 1) if depth is not None else n + 1)
    return ERR_SAFETY * g * s_a2, ERR_SAFETY * g * math.sqrt(s_c0 * s_a2)


def gram_sums(model: MixedLinearModel, chunks, lin=None, ids: torch.Tensor | None = None, keep_features: bool = False) -> GramState:
    """One streamed pass: the Gram sums of (features, labels) chunks, with their rounding-error
    bounds (:func:`_pass_error`) and the samples' ``ids`` (sorted; ``None``: 0..n−1);
    ``keep_features``: the features too (``GramState.F``, in the prefix's dtype, on the CPU)."""
    m = model
    lin = lin or _linear_head(m)
    if lin is None:
        raise InvalidDataError("Gram sums need an affine head (linearize='last:1' on a network ending in nn.Linear)")
    h = lin.in_features
    G = torch.zeros(h + 1, h + 1, dtype=torch.float64, device=m.device_)
    B = torch.zeros(lin.out_features, h + 1, dtype=torch.float64, device=m.device_)
    c0, n, sum_a2, n_chunks, max_chunk = 0.0, 0, 0.0, 0, 0
    kept: list[torch.Tensor] = []
    for feats, y in chunks:
        if keep_features:
            kept.append(feats.detach().to("cpu", model.prefix_dtype_))
        a = torch.cat([feats.to(torch.float64), torch.ones(feats.shape[0], 1, dtype=torch.float64, device=m.device_)], dim=1)
        with torch.no_grad():
            f0 = m.head(feats).to(torch.float64)
        r0 = f0 - m.targets(y, f0.shape[1]).to(torch.float64)
        G += a.T @ a
        B += r0.T @ a
        c0 += float((r0**2).sum())
        sum_a2 += float((a**2).sum())
        n += feats.shape[0]
        n_chunks += 1
        max_chunk = max(max_chunk, int(feats.shape[0]))
    eG, eB = _pass_error(n, h + 1, sum_a2, c0, depth=max_chunk + n_chunks + 1)
    F = torch.cat(kept) if keep_features and kept else None
    if ids is None:
        ids = torch.arange(n, dtype=torch.int64)
    else:
        raw = torch.as_tensor(ids, dtype=torch.int64).reshape(-1).cpu()
        ids = _sorted_ids(raw, n)
        if F is not None:
            F = F[torch.argsort(raw, stable=True)]
    return GramState(G, B, c0, n, eG, eB, ids, F)


def _sorted_ids(ids, n: int) -> torch.Tensor:
    t = torch.as_tensor(ids, dtype=torch.int64).reshape(-1).cpu()
    if t.numel() != n:
        raise InvalidDataError(f"{t.numel()} sample ids for {n} samples")
    t = torch.sort(t).values
    if t.numel() > 1 and bool((t[1:] == t[:-1]).any()):
        raise InvalidDataError("sample ids repeat: every sample needs its own id")
    return t


def gram_state(model: MixedLinearModel, source: TensorSource) -> GramState:
    """Gram sums of a data source (features through the frozen prefix, chunk by chunk)."""
    return gram_sums(model, ((model.features(x), y) for x, y in source), ids=getattr(source, "ids", None),
                     keep_features=model.keeps_features)


def _tensors(state) -> list[torch.Tensor]:
    out = []
    for part in state[1:]:
        if isinstance(part, torch.Tensor):
            out.append(part)
        elif isinstance(part, list):
            out += [t for t in part if isinstance(t, torch.Tensor)]
    return out


def _linear_head(model: MixedLinearModel):
    """The head's single ``nn.Linear`` when the head is exactly one affine layer, else None."""
    from torch import nn

    head = model.head
    mods = [m for m in head.modules() if not isinstance(m, (nn.Sequential, nn.Identity, nn.Flatten))]
    if len(mods) == 1 and isinstance(mods[0], nn.Linear) and set(model.user) == {n for n, _ in head.named_parameters()}:
        return mods[0]
    return None


class Objective:
    """L_D for one model and one data set, with three interchangeable ways to run the passes
    (same convention, same numbers; tests check each against the others and the dense oracle):

    * **Gram** — the linearised head is a single affine layer ``f = W φ + b`` (``linearize="last:1"``
      on a network ending in ``nn.Linear``): ``J v`` is exactly ``V φ + c``, the Hessian is the
      Gram matrix ``G = AᵀA/N + μI`` of ``A = [φ, 1]`` (shared by all outputs), built in one
      streamed pass; every later gradient and HVP costs O(C·h²) and the Newton system is solved
      exactly by one Cholesky factorisation.
    * **explicit** — the head is an ``nn.Sequential`` of Linear layers and elementwise
      activations (:mod:`workers.unlearning.sequential`): one primal pass per chunk, then J v and
      Jᵀ u are plain matrix products; a Jacobi preconditioner comes from the same records.
    * **generic** — any module: ``torch.func.jvp`` + ``torch.func.vjp`` per chunk.

    ``pass_dtype=torch.float32`` (explicit path) runs CG's products in float32 with float64
    sums, reliable updates and a float64 gradient: about half the cost of a float64 iteration,
    but on ill-conditioned sets (digits, μ=1e-3) it needs ~1.5× the iterations, so it is not
    the default (None: the model's dtype).

    Per-chunk state (the head's inputs, and for the explicit path the activations' derivatives)
    is cached when it fits in ``cache_bytes``; otherwise it is recomputed chunk by chunk on every
    pass, so memory grows with the chunk size, not with N.
    """

    def __init__(
        self,
        model: MixedLinearModel,
        source: TensorSource,
        mu: float,
        *,
        cache_features: bool = True,
        use_gram: bool = True,
        use_explicit: bool = True,
        precondition: bool = True,
        cache_bytes: int = 512 * 2**20,
        pass_dtype: torch.dtype | None = None,
    ) -> None:
        if len(source) == 0:
            raise InvalidDataError("the data set is empty: nothing to fit or retain")
        if mu <= 0:
            raise InvalidDataError("l2 (mu) must be > 0: the bound relies on mu-strong convexity")
        self.model = model
        self.source = source
        self.mu = float(mu)
        self.n = len(source)
        self.precondition = precondition
        self._diag: torch.Tensor | None = None
        self._cache: list | None = None
        self._num_out: int | None = None
        self._gram = None
        self.gram_sums: GramState | None = None
        self._seq: SequentialProducts | None = None
        self._fast: SequentialProducts | None = None  # the CG passes in pass_dtype (explicit path)
        self._fast_cache: list | None = None
        self.pass_dtype = model.dtype_
        lin = _linear_head(model) if (use_gram and model.prefix is not None) else None
        if lin is not None:
            self.path = "gram"
            self._build_gram(lin)
            return
        self._seq = SequentialProducts(model) if (use_explicit and sequential.applies(model)) else None
        self.path = "explicit" if self._seq is not None else "generic"
        if self._seq is not None and pass_dtype is not None and pass_dtype != model.dtype_:
            self._set_fast(pass_dtype, cache_features, cache_bytes)
            if self._fast is not None:
                return
        worth_caching = self._seq is not None or model.prefix is not None
        if cache_features and worth_caching:
            first = next(iter(self._states()))
            if self.path == "explicit" and first[0] == "generic":  # a Linear saw a non-2-D input
                self._seq, self.path = None, "generic"
                first = next(iter(self._states()))
            per_chunk = sum(t.numel() * t.element_size() for t in _tensors(first))
            chunks = math.ceil(self.n / source.chunk_size)
            if per_chunk * chunks <= cache_bytes:
                self._cache = list(self._states())

    def _set_fast(self, dtype: torch.dtype, cache: bool, cache_bytes: int) -> None:
        """CG passes in ``dtype`` (float32): records cached in that dtype when they fit in
        ``cache_bytes``, else streamed. Gradients — and so the certified residual — stay in the
        model's dtype, streamed chunk by chunk (a few passes per solve)."""
        self._fast = SequentialProducts(self.model, dtype)
        first = next(iter(self._fast_states()), None)
        if first is None or first[0] != "explicit":  # a Linear saw a non-2-D input
            self._fast = None
            return
        self.pass_dtype = dtype
        per_chunk = sum(t.numel() * t.element_size() for t in _tensors(first))
        chunks = math.ceil(self.n / self.source.chunk_size)
        if cache and per_chunk * chunks <= cache_bytes:
            self._fast_cache = list(self._fast_states())

    def _fast_states(self):
        m, seq = self.model, self._fast
        for x, y in self.source:
            pr = seq.primal(m.features(x))
            if pr is None:
                yield ("generic",)
                return
            yield ("explicit", None, [r for r in pr[1]], y)

    def fast_states(self):
        if self._fast_cache is not None:
            yield from self._fast_cache
        else:
            yield from self._fast_states()

    def _build_gram(self, lin) -> None:
        self._set_gram(gram_sums(self.model, self.chunks(), lin, ids=getattr(self.source, "ids", None),
                                 keep_features=self.model.keeps_features))

    def _set_gram(self, g: "GramState") -> None:
        m = self.model
        lin = _linear_head(m)
        names = dict((id(p), n) for n, p in m.head.named_parameters())
        self.n = g.n
        self.gram_sums = g
        self._gram = (g.G / g.n, g.B / g.n, names[id(lin.weight)], names[id(lin.bias)] if lin.bias is not None else None)
        self._cache = None  # the Gram replaces the cached features
        self._c0 = g.c0 / g.n

    @classmethod
    def from_gram(cls, model: MixedLinearModel, state: "GramState", mu: float) -> "Objective":
        """The objective of a data set known only through its Gram sums (e.g. a cached D_u
        minus the forgotten samples): exact, and no pass over the retained data."""
        if state.n <= 0:
            raise InvalidDataError("the data set is empty: nothing to fit or retain")
        if _linear_head(model) is None:
            raise InvalidDataError("Gram sums need an affine head (linearize='last:1' on a network ending in nn.Linear)")
        obj = cls.__new__(cls)
        obj.model, obj.source, obj.mu = model, None, float(mu)
        obj._cache, obj._num_out, obj._seq, obj._diag = None, None, None, None
        obj._fast, obj._fast_cache, obj.pass_dtype = None, None, model.dtype_
        obj.precondition, obj.path, obj.n = False, "gram", state.n
        obj._set_gram(state)
        return obj

    def residual_error(self, w: dict[str, torch.Tensor], gn: float) -> float:
        """Gram path: an upper bound on ‖∇L(w)‖ − ‖ĝ‖ for the computed gradient ĝ (norm ``gn``).

        The exact gradient in augmented form is (W_a G + B)/n + μ w. The stored sums carry
        ‖Ĝ − G‖_F ≤ eG and ‖B̂ − B‖_F ≤ eB, so they add at most (‖W_a‖_2·eG + eB)/n (as
        ‖W_a E‖_F ≤ ‖W_a‖_2 ‖E‖_F; the computed spectral norm is rounded up by 1 + 1e-8, far
        above an SVD's error on a C × (h+1) matrix). Evaluating ĝ from the stored sums (the
        divisions by n, inner products of length h+1, two additions) adds at most
        γ_{h+4}·‖|W_a||Ĝ/n| + |B̂/n|‖_F + γ_2·μ‖w‖ (Higham 3.5, elementwise, computed here), and
        the norm itself is within γ_{P+1}·‖ĝ‖. 0 off the Gram path (not bounded there)."""
        if self._gram is None:
            return 0.0
        st = self.gram_sums
        G, B = self._gram[0], self._gram[1]
        wf = self.model.flatten(w).to(torch.float64)
        Wa = self._to_aug(wf)
        w2 = float(torch.linalg.matrix_norm(Wa, ord=2)) * (1 + 1e-8)
        k = G.shape[0]
        sums = (w2 * st.eG + st.eB) / st.n
        elementwise = float(torch.linalg.norm(Wa.abs() @ G.abs() + B.abs())) * (1 + gamma(k + 2))
        evaluation = gamma(k + 4) * elementwise + gamma(2) * self.mu * float(wf.norm())
        norm = gamma(wf.numel() + 1) * gn
        return ERR_SAFETY * (sums + evaluation + norm)

    def _direct(self, g: torch.Tensor) -> torch.Tensor:
        """H d = g for an affine head: H acts as (G + μI) on every output's row, so one Cholesky
        factorisation of the (h+1)×(h+1) matrix solves all of them exactly (no CG needed)."""
        G = self._gram[0]
        rhs = self._to_aug(g).T
        if G.device.type != "cpu" and G.shape[0] <= CPU_SOLVE_MAX:
            # tiny dense float64 algebra: a GPU launches several kernels (and float64 is slow on many
            # GPUs) for a few hundred rows; the CPU factorises it in well under a millisecond
            G, rhs = G.cpu(), rhs.cpu()
        L = torch.linalg.cholesky(G + self.mu * torch.eye(G.shape[0], dtype=G.dtype, device=G.device))
        D = torch.cholesky_solve(rhs, L).T.to(self._gram[0].device)
        return self._from_aug(D)

    def _to_aug(self, vec: torch.Tensor) -> torch.Tensor:
        wn, bn, = self._gram[2], self._gram[3]
        d = self.model.unflatten(vec)
        W = d[wn].to(torch.float64)
        b = d[bn].to(torch.float64) if bn else torch.zeros(W.shape[0], dtype=torch.float64, device=W.device)
        return torch.cat([W, b[:, None]], dim=1)

    def _from_aug(self, M: torch.Tensor) -> torch.Tensor:
        wn, bn = self._gram[2], self._gram[3]
        parts = {wn: M[:, :-1]}
        if bn:
            parts[bn] = M[:, -1]
        return torch.cat([parts[n].reshape(-1) for n in self.model._lin])

    def _states(self):
        """Per-chunk state: ("explicit", f0, records, y) or ("generic", feats, y)."""
        m = self.model
        for x, y in self.source:
            feats = m.features(x)
            if self._seq is not None:
                pr = self._seq.primal(feats)
                if pr is not None:
                    yield ("explicit", pr[0], pr[1], y)
                    continue
            yield ("generic", feats, y)

    def states(self):
        if self._cache is not None:
            yield from self._cache
        else:
            yield from self._states()

    def chunks(self):
        """(features, labels) per chunk (the head's inputs)."""
        if self._cache is not None and self._cache and self._cache[0][0] == "generic":
            for _, feats, y in self._cache:
                yield feats, y
        else:
            for x, y in self.source:
                yield self.model.features(x), y

    # -- the three functions --------------------------------------------------------------
    def loss_and_grad(self, w: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor]:
        m = self.model
        if self._gram is not None:
            G, B = self._gram[0], self._gram[1]
            wf = m.flatten(w)
            Wa = self._to_aug(wf)
            grad = self._from_aug(Wa @ G + B) + self.mu * wf
            loss = 0.5 * (self._c0 + 2 * float((Wa * B).sum()) + float(((Wa @ G) * Wa).sum())) + 0.5 * self.mu * float(wf @ wf)
            return loss, grad
        total = 0.0
        grad = torch.zeros(m.num_user_parameters, dtype=torch.float64, device=m.device_)
        for st in self.states():
            if st[0] == "explicit":
                _, out, rec, y = st
                r = out + self._seq.jvp(rec, w) - m.targets(y, out.shape[1])
                grad += m.flatten(self._seq.vjp(rec, r))
            else:
                _, feats, y = st
                out, jw = m.head_jvp(feats, w)
                r = out + jw - m.targets(y, out.shape[1])
                grad += m.flatten(m.head_vjp(feats, r))
            total += 0.5 * float((r.to(torch.float64) ** 2).sum())
        wf = m.flatten(w)
        loss = total / self.n + 0.5 * self.mu * float(wf @ wf)
        return loss, grad / self.n + self.mu * wf

    def grad(self, w: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss_and_grad(w)[1]

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self._gram is not None:
            return self._from_aug(self._to_aug(v) @ self._gram[0]) + self.mu * v
        vd = m.unflatten(v)
        acc = torch.zeros_like(v)
        for st in self.states():
            if st[0] == "explicit":
                rec = st[2]
                acc += m.flatten(self._seq.vjp(rec, self._seq.jvp(rec, vd)))
            else:
                feats = st[1]
                _, jv = m.head_jvp(feats, vd)
                acc += m.flatten(m.head_vjp(feats, jv))
        return acc / self.n + self.mu * v

    def hvp_fast(self, v: torch.Tensor) -> torch.Tensor:
        """H v with the passes in ``pass_dtype`` (float32) and the sum over chunks in float64:
        what CG iterates with. Exact to float32 rounding; the outer loop refines in float64."""
        if self._fast is None:
            return self.hvp(v)
        seq = self._fast
        vd = {k: t.to(seq.dtype) for k, t in self.model.unflatten(v).items()}
        acc = torch.zeros_like(v)
        for st in self.fast_states():
            rec = st[2]
            acc += self.model.flatten(seq.vjp(rec, seq.jvp(rec, vd)))
        return acc / self.n + self.mu * v

    def diagonal(self) -> torch.Tensor | None:
        """diag(H) = diag(JᵀJ)/N + μ on the explicit path (the Jacobi preconditioner); None otherwise."""
        if self._seq is None:
            return None
        if self._diag is None:
            m = self.model
            acc = torch.zeros(m.num_user_parameters, dtype=torch.float64, device=m.device_)
            seq = self._fast or self._seq
            for st in (self.fast_states() if self._fast is not None else self.states()):
                if st[0] == "explicit":
                    acc += m.flatten(seq.diag_ggn(st[2]))
                else:
                    return None
            self._diag = acc / self.n + self.mu
        return self._diag

    # -- solvers ----------------------------------------------------------------------------
    def cg(self, b: torch.Tensor, tol: float, max_iter: int, progress: Progress = None, it0: int = 0, fast: bool = False) -> tuple[torch.Tensor, int, float]:
        """Solve H d = b by conjugate gradients, Jacobi-preconditioned where the diagonal is
        known (float64 vectors and scalars). Stops on the recursive residual norm ≤ tol.
        ``fast``: every H p in ``pass_dtype`` (see :meth:`hvp_fast`)."""
        hvp = self.hvp_fast if fast else self.hvp
        inv = None
        if self.precondition:
            diag = self.diagonal()
            inv = None if diag is None else 1.0 / diag
        x = torch.zeros_like(b)
        r = b.clone()
        z = r * inv if inv is not None else r
        p = z.clone()
        rz = float(r @ z)
        rn = float(r.norm())
        it = 0
        last_report = 0.0
        anchor = rn  # fast: the residual norm at the last reliable update
        while it < max_iter:
            if fast and (rn <= tol or rn <= RELIABLE_DROP * anchor):
                # reliable update: the true residual b − H x in float64 replaces the recursive
                # one (float32 products would otherwise cap the attainable accuracy)
                r = b - self.hvp(x)
                z = r * inv if inv is not None else r
                rz = float(r @ z)
                rn = anchor = float(r.norm())
            if rn <= tol:
                break
            hp = hvp(p)
            alpha = rz / float(p @ hp)
            x += alpha * p
            r -= alpha * hp
            z = r * inv if inv is not None else r
            rz_new = float(r @ z)
            p = z + (rz_new / rz) * p
            rz = rz_new
            rn = float(r.norm())
            it += 1
            now = time.monotonic()
            if progress is not None and now - last_report >= 0.25:
                last_report = now
                progress({"phase": "solve", "iteration": it0 + it, "residual": rn})
        return x, it, rn

    def minimise(
        self,
        w0: dict[str, torch.Tensor],
        *,
        tol: float,
        max_iter: int,
        max_newton_steps: int = 5,
        progress: Progress = None,
    ) -> tuple[dict[str, torch.Tensor], SolveResult]:
        """Newton steps ``w ← w − H⁻¹∇L(w)`` (each solved by CG) until ‖∇L(w)‖ ≤ tol.

        L is an exact quadratic, so one step lands on the minimiser up to the CG tolerance;
        further steps only remove floating-point drift (iterative refinement).

        With float32 passes (``pass_dtype``), CG multiplies by H in float32 and replaces its
        recursive residual by the true float64 one at every 100-fold drop (reliable updates), so
        one Krylov run reaches float64 accuracy; the gradient is then recomputed in float64. Those steps do not count against ``max_newton_steps`` while each one
        shrinks ‖∇L‖ at least tenfold; the first that does not switches to float64 passes.
        The reported residual is always the float64 ‖∇L(w)‖, so the bound stays sound."""
        start = time.perf_counter()
        m = self.model
        w = {k: v.clone() for k, v in w0.items()}
        g = self.grad(w)
        gn = float(g.norm())
        iters = 0
        steps = 0  # float64 steps (bounded by max_newton_steps)
        fast = self._fast is not None
        fast_steps = 0
        while gn > tol and steps < max_newton_steps and iters < max_iter:
            if self._gram is not None:
                d, it = self._direct(g), 1  # one exact (Cholesky) solve counts as one iteration
            elif fast:
                # float32 CG gets half the iteration budget; float64 steps finish if it runs out
                d, it, _ = self.cg(g, 0.5 * tol, max(1, (max_iter - iters) // 2), progress, iters, fast=True)
            else:
                d, it, _ = self.cg(g, 0.5 * tol, max_iter - iters, progress, iters)
            iters += it
            w_new = m.unflatten(m.flatten(w) - d)
            g_new = self.grad(w_new)
            gn_new = float(g_new.norm())
            if fast:
                fast_steps += 1
                if not gn_new <= 0.1 * gn or fast_steps >= MAX_FAST_STEPS:
                    fast = False  # float32 no longer makes progress: the rest in float64
                if not gn_new < gn:
                    continue  # discard a step that made things worse
            else:
                steps += 1
            w, g, gn = w_new, g_new, gn_new
            if progress is not None:
                progress({"phase": "solve", "iteration": iters, "residual": gn, "newton_step": steps})
        res = SolveResult(
            iterations=iters,
            residual_norm=gn,
            converged=gn <= tol,
            seconds=time.perf_counter() - start,
            newton_steps=steps + fast_steps,
            n_samples=self.n,
            path=self.path,
            residual_error=self.residual_error(w, gn),
        )
        return w, res
