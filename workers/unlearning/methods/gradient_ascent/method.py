"""``gradient_ascent``: one scaled gradient-ascent step per forgotten sample (Melamed, Yehudai and
Vardi, 2025, "Provable unlearning with gradient ascent on two-layer ReLU neural networks";
DESIGN §14.2).

A bias-free, 1-homogeneous network N(x; θ) with one scalar output (``linear``, ``two_layer_relu``)
is trained by Lethe with full-batch gradient descent on the mean logistic loss
L(θ) = (1/n) Σ_i ℓ(y_i N(x_i; θ)), ℓ(q) = log(1 + e^{−q}), y ∈ {±1} (label 1 → +1, label 0 → −1).
One step is θ ← θ − η∇L(θ) = θ + Σ_i (η/n)·|ℓ'(q_i)|·y_i ∇N(x_i; θ) (ℓ' < 0), so each sample's
dual coefficient accumulates exactly as λ_i = Σ_t (η/n)·|ℓ'(q_i,t)|: the 1/n is the loss's mean
normalisation. For ``linear`` from θ₀ = 0 this gives θ = Σ_i λ_i y_i x_i exactly; for
``two_layer_relu`` the start θ₀ (small, ``init_scale``) and the moving activation patterns make it
approximate, and ``init_fraction`` = ‖θ₀‖/‖θ‖ is logged with the figures.

Forgetting sample r is θ⁻ = θ + β∇_θ ℓ(y_r N(x_r; θ)), β = λ_r/|ℓ'(y_r N(x_r; θ))|. Since
∇_θ ℓ = ℓ'(q_r)·y_r ∇N(x_r; θ) and ℓ' < 0 this is θ − λ_r y_r ∇N(x_r; θ): computed in that form,
it never divides by an |ℓ'| that underflows for a confident sample. Several samples are removed by
successive steps, each at the current θ; their λ leave the kept duals (the next job starts there).

The success figures (``Bound.extra["kkt"]``, so ``bound.kkt`` in the version) are the KKT criteria
of the max-margin problem on the retained data D_r, at the rescaling θ̃ = θ/γ with
γ = min_{i∈D_r} y_i N(x_i; θ) (normalised margin 1; N is 1-homogeneous so ∇N(x; θ̃) = ∇N(x; θ) and
λ̃ = λ/γ):

* ``stationarity``: ‖θ − Σ_{i∈D_r} λ_i y_i ∇N(x_i; θ)‖ / ‖θ‖ (scale-free);
* ``complementary_slackness``: max_i λ̃_i·(y_i N(x_i; θ̃) − 1);
* ``min_margin``: γ/‖θ‖; ``feasible``: 1 when γ > 0 (every retained sample on the right side,
  so θ̃ meets y_i N(x_i; θ̃) ≥ 1), else 0 (and the slackness is infinite).

Guarantee ``heuristic``: the release is gated by the ``standard`` family's measured gates
(:func:`~workers.unlearning.gates.check_measured_gates`: eval and retained accuracy, forget-set
accuracy, MIA AUC) and optionally by stationarity; a release that fails falls back to retraining.
Files are the family's (:func:`workers.unlearning.standard.to_bytes`, format ``lethe.standard/1``):
the served one is the network's ``state_dict`` (``load_model`` builds it; its output is the scalar
N(x; θ), whose sign is the label), the private one keeps float64 weights with ``lethe.ids`` and
``lethe.duals``. Uploaded checkpoints are refused (they carry no λ).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from safetensors.torch import load as st_load
from torch import nn

from workers.unlearning import standard
from workers.unlearning.bounds import Bound
from workers.unlearning.data import TensorSource
from workers.unlearning.errors import ConfigError, InvalidDataError
from workers.unlearning.evaluation import auc
from workers.unlearning.files import read_metadata
from workers.unlearning.gates import GateResult, check_measured_gates
from workers.unlearning.methods.base import ModelSpec
from workers.unlearning.methods.gradient_ascent.config import GradientAscentConfig
from workers.unlearning.networks import build_network
from workers.unlearning.objective import Progress, SolveResult

DTYPE = torch.float64


@dataclass
class AscentModel:
    """The network (float64) and what forgetting needs: each trained-on sample's id and dual
    coefficient. Has what :func:`standard.to_bytes` reads (``network``, ``architecture``,
    ``architecture_config``), so its files are the family's."""

    architecture: str
    architecture_config: dict[str, Any]
    network: nn.Module
    ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))  # sorted
    duals: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=DTYPE))  # λ, aligned with ids
    init_norm: float = 0.0  # ‖θ₀‖ of the training the duals come from

    def parameters(self) -> list[torch.Tensor]:
        return [p for p in self.network.parameters() if p.requires_grad]

    def theta(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.parameters()])

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.to(DTYPE)).reshape(-1)


@dataclass
class AscentResult(SolveResult):
    figures: dict[str, float] = field(default_factory=dict)


def signs(y: torch.Tensor) -> torch.Tensor:
    """Labels {0, 1} as y ∈ {−1, +1}; anything else is refused (the output's sign is the label)."""
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 1):
        raise InvalidDataError(f"gradient_ascent needs binary labels 0/1; found {int(y.min())}..{int(y.max())}")
    return y.to(DTYPE) * 2.0 - 1.0


def _ids(source: TensorSource) -> torch.Tensor:
    return source.ids.to(torch.int64).cpu() if source.ids is not None else torch.arange(len(source), dtype=torch.int64)


def _check(source: TensorSource, what: str) -> None:
    if len(source) == 0:
        raise InvalidDataError(f"the {what} set is empty")
    source.validate(2)
    ids = _ids(source)
    if torch.unique(ids).numel() != ids.numel():
        raise InvalidDataError(f"the {what} set repeats a sample id")


def kkt_figures(model: AscentModel, source: TensorSource, duals: torch.Tensor) -> dict[str, float]:
    """The KKT criteria of the max-margin problem on ``source`` with dual coefficients ``duals``
    (one per row of ``source``, in its order): see the module docstring."""
    params = model.parameters()
    combo = [torch.zeros_like(p) for p in params]
    margins, start = [], 0
    for x, y in source:
        lam = duals[start : start + len(y)]
        start += len(y)
        ys = signs(y)
        out = model.outputs(x)
        grads = torch.autograd.grad((lam * ys * out).sum(), params, allow_unused=True)
        for c, g in zip(combo, grads, strict=True):
            if g is not None:
                c += g
        margins.append((ys * out).detach())
    theta = model.theta()
    norm = float(theta.norm())
    q = torch.cat(margins)
    if norm == 0.0 or len(q) == 0:
        return {"stationarity": math.inf, "complementary_slackness": math.inf, "min_margin": 0.0, "feasible": 0.0, "n": float(len(q))}
    resid = theta - torch.cat([c.reshape(-1) for c in combo])
    gamma = float(q.min())
    if gamma > 0:
        slack = float((duals / gamma * (q / gamma - 1.0)).max())
    else:
        slack = math.inf
    return {
        "stationarity": float(resid.norm()) / norm,
        "complementary_slackness": slack,
        "min_margin": gamma / norm,
        "feasible": 1.0 if gamma > 0 else 0.0,
        "n": float(len(q)),
        "init_fraction": model.init_norm / norm,
    }


class GradientAscent:
    name: ClassVar[str] = "gradient_ascent"
    guarantee: ClassVar[str] = "heuristic"
    families: ClassVar[frozenset[str]] = frozenset({"standard"})
    kinds: ClassVar[frozenset[str]] = frozenset({"samples"})
    config_cls: ClassVar[type[GradientAscentConfig]] = GradientAscentConfig
    # the noise-free weights with the dual coefficients λ and the ids of the samples they belong
    # to (user data: never served)
    private_artifacts: ClassVar[tuple[str, ...]] = ("weights",)

    def build(self, spec: ModelSpec, cfg: GradientAscentConfig) -> AscentModel:
        if spec.architecture not in cfg.architectures:
            raise ConfigError(f"gradient_ascent serves {', '.join(cfg.architectures)} only, not {spec.architecture!r}")
        net = build_network(spec.architecture, spec.architecture_config).to(DTYPE)
        model = AscentModel(spec.architecture, dict(spec.architecture_config), net)
        self._init(model, cfg)
        return model

    def _init(self, model: AscentModel, cfg: GradientAscentConfig) -> None:
        """θ₀: 0 for ``linear`` (so θ = Σ λ_i y_i x_i exactly); small Gaussian for the ReLU layer
        (at 0 every ReLU gradient vanishes). Deterministic given ``cfg.seed``."""
        gen = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():
            for p in model.parameters():
                if model.architecture == "linear":
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=DTYPE) * cfg.init_scale)
        model.init_norm = float(model.theta().norm())
        model.ids = torch.zeros(0, dtype=torch.int64)
        model.duals = torch.zeros(0, dtype=DTYPE)

    def supports(self, operation: str) -> bool:
        return operation in ("zero", "retrain")

    def prepare(self, model: AscentModel, core: TensorSource, cfg: GradientAscentConfig, progress: Progress = None) -> dict:
        """Nothing to do: every weight is trained on the user split (every sample needs its λ), so
        samples in ``core`` are refused, as for every ``standard`` network."""
        if len(core):
            raise InvalidDataError(f"a standard-family model trains on its user split; {len(core)} core samples are not used: upload them as user samples")
        return {"seconds": 0.0}

    # -- training --------------------------------------------------------------------------------
    def train(self, model: AscentModel, user: TensorSource, cfg: GradientAscentConfig, progress: Progress = None) -> AscentResult:
        """Full-batch gradient descent on the mean logistic loss from θ₀, accumulating
        λ_i = Σ_t (η/n)·|ℓ'(y_i N(x_i; θ_t))| (ℓ'(q) = −σ(−q)) at the iterate each step starts from."""
        _check(user, "training")
        self._init(model, cfg)
        n, params = len(user), model.parameters()
        duals = torch.zeros(n, dtype=DTYPE)
        ys = [signs(y) for _, y in user]
        t0 = time.perf_counter()
        last = 0.0
        for step in range(cfg.epochs):
            grads = [torch.zeros_like(p) for p in params]
            start, total = 0, 0.0
            for (x, _), y in zip(user, ys, strict=True):
                q = y * model.outputs(x)
                loss = torch.nn.functional.softplus(-q).sum() / n
                for g, d in zip(grads, torch.autograd.grad(loss, params), strict=True):
                    g += d
                duals[start : start + len(y)] += (cfg.lr / n) * torch.sigmoid(-q.detach())
                start += len(y)
                total += float(loss.detach())
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p -= cfg.lr * g
            now = time.monotonic()
            if progress is not None and now - last >= 0.25:
                last = now
                progress({"phase": "train", "epoch": step + 1, "loss": total})
        ids = _ids(user)
        order = torch.argsort(ids)
        model.ids, model.duals = ids[order], duals[order]
        figures = kkt_figures(model, user, duals)
        return AscentResult(iterations=cfg.epochs, residual_norm=figures["stationarity"], converged=True,
                            seconds=time.perf_counter() - t0, n_samples=n, operation="fit", path="gd", figures=figures)

    def retrain(self, model: AscentModel, retained: TensorSource, cfg: GradientAscentConfig, core_source: TensorSource | None = None,
                progress: Progress = None) -> AscentResult:
        """Gradient descent from θ₀ on D_r (the fallback, and the oracle the tests compare with)."""
        res = self.train(model, retained, cfg, progress)
        res.operation = "retrain"
        return res

    def zero(self, model: AscentModel) -> AscentResult:
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        model.ids, model.duals, model.init_norm = torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=DTYPE), 0.0
        return AscentResult(operation="zero")

    # -- forgetting ------------------------------------------------------------------------------
    def duals_of(self, model: AscentModel, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(λ of each id, 0 for ids the model never trained on; whether each id is kept)."""
        if model.ids.numel() == 0:
            return torch.zeros(len(ids), dtype=DTYPE), torch.zeros(len(ids), dtype=torch.bool)
        pos = torch.searchsorted(model.ids, ids).clamp(max=model.ids.numel() - 1)
        known = model.ids[pos] == ids
        return torch.where(known, model.duals[pos], torch.zeros((), dtype=DTYPE)), known

    def step(self, model: AscentModel, x: torch.Tensor, y: torch.Tensor, duals: torch.Tensor) -> None:
        """Successive scaled ascent steps θ ← θ − λ_r y_r ∇N(x_r; θ), one sample at a time."""
        params = model.parameters()
        ys = signs(y)
        for i in range(len(y)):
            if float(duals[i]) == 0.0:
                continue
            out = model.outputs(x[i : i + 1]).sum()
            grads = torch.autograd.grad(out, params, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    if g is not None:
                        p -= duals[i] * ys[i] * g

    def forget(self, model: AscentModel, retained: TensorSource, cfg: GradientAscentConfig, progress: Progress = None,
               removed: TensorSource | None = None) -> AscentResult:
        """Remove every kept sample not in ``retained`` by its scaled ascent step. Their inputs come
        from ``removed`` (the runner passes the forgotten samples with their ids); a kept sample
        missing from both is refused. Samples of ``retained`` the model never trained on keep λ = 0."""
        _check(retained, "retained")
        t0 = time.perf_counter()
        r_ids = _ids(retained)
        gone = model.ids[~torch.isin(model.ids, r_ids)]
        if gone.numel():
            if removed is None or removed.ids is None:
                raise InvalidDataError(f"{gone.numel()} trained-on sample(s) left D_r: their inputs (with ids) are needed to forget them")
            rm_ids = removed.ids.to(torch.int64).cpu()
            missing = gone[~torch.isin(gone, rm_ids)]
            if missing.numel():
                raise InvalidDataError(f"{missing.numel()} trained-on sample(s) left D_r but are not among the removed, e.g. id {int(missing[0])}")
            take = torch.isin(rm_ids, gone).nonzero().reshape(-1)
            take = take[torch.argsort(rm_ids[take])]
            removed.validate(2)
            lam, _ = self.duals_of(model, rm_ids[take])
            before = kkt_figures(model, retained, self.duals_of(model, r_ids)[0])["stationarity"]
            self.step(model, removed.x[take], removed.y[take], lam)
        else:
            before = None
        # the kept duals now describe D_r (new samples enter with λ = 0: never trained on)
        lam_r, _ = self.duals_of(model, r_ids)
        order = torch.argsort(r_ids)
        model.ids, model.duals = r_ids[order], lam_r[order]
        figures = kkt_figures(model, retained, lam_r)
        if before is not None:
            figures["stationarity_before"] = before
        figures["removed"] = float(gone.numel())
        if progress is not None:
            progress({"phase": "solve", "iteration": int(gone.numel()), "residual": figures["stationarity"]})
        return AscentResult(iterations=int(gone.numel()), residual_norm=figures["stationarity"], converged=True,
                            seconds=time.perf_counter() - t0, n_samples=len(retained), operation="forget", path="ascent",
                            figures=figures)

    # -- release ---------------------------------------------------------------------------------
    def bound(self, result: SolveResult, cfg: GradientAscentConfig, *, exact: bool | None = None, method: str | None = None) -> Bound:
        """``forget``: heuristic (no information bound: KL ∞), with the KKT figures on D_r.
        ``fit``/``retrain``/``zero``: exact (the weights never saw the forgotten data)."""
        if exact is None:
            exact = result.operation != "forget"
        figures = dict(getattr(result, "figures", {}) or {})
        kl = 0.0 if exact else math.inf
        return Bound(method or (result.operation if exact and result.operation in ("zero", "retrain") else self.name),
                     "exact" if exact else self.guarantee, float(result.residual_norm), 0.0, cfg.noise_std, int(result.iterations),
                     kl, kl, {"kkt": figures})

    def refine(self, cfg: GradientAscentConfig) -> None:
        return None  # one step is the method: the remedy is the retrain fallback

    def gate(self, bound: Bound, parent_eval: dict | None, new_eval: dict | None, cfg: GradientAscentConfig) -> GateResult:
        """The ``standard`` family's measured gates (DESIGN §6.7), and ``max_stationarity`` on the
        KKT stationarity after the step when it is set."""
        result = check_measured_gates(parent_eval, new_eval, cfg)
        if cfg.max_stationarity is not None:
            s = float((bound.extra.get("kkt") or {}).get("stationarity", math.inf))
            if not s <= cfg.max_stationarity:
                result.ok = False
                result.reasons.append(f"KKT stationarity {s:.4g} > max_stationarity {cfg.max_stationarity}")
        return result

    def evaluate(self, model: AscentModel, source: TensorSource, cfg: GradientAscentConfig) -> dict:
        """Accuracy (sign of N) and mean logistic loss."""
        if len(source) == 0:
            return {"accuracy": None, "loss": None, "n": 0}
        losses = self._losses(model, source)
        correct = 0
        with torch.no_grad():
            for x, y in source:
                correct += int(((model.outputs(x) > 0).to(torch.long) == y).sum())
        return {"accuracy": correct / len(source), "loss": float(losses.mean()), "n": len(source)}

    @staticmethod
    def _losses(model: AscentModel, source: TensorSource) -> torch.Tensor:
        with torch.no_grad():
            parts = [torch.nn.functional.softplus(-signs(y) * model.outputs(x)) for x, y in source]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=DTYPE)

    def membership_auc(self, model: AscentModel, forget: TensorSource, eval_: TensorSource, cfg: GradientAscentConfig) -> float:
        """Loss-threshold attack: a lower loss means "member"; 0.5 = forgotten look unseen."""
        return auc(-self._losses(model, forget), -self._losses(model, eval_))

    def release(self, model: AscentModel, cfg: GradientAscentConfig) -> dict[str, torch.Tensor]:
        """The trained weights + s·ξ (s = ``noise_std``, 0 by default), from a fresh OS seed."""
        gen = torch.Generator().manual_seed(secrets.randbits(63))
        out = {}
        for name, p in model.network.named_parameters():
            out[name] = p.detach() + cfg.noise_std * torch.randn(p.shape, generator=gen, dtype=p.dtype) if cfg.noise_std else p.detach().clone()
        del gen
        return out

    def serve_bytes(self, model: AscentModel, released: dict[str, torch.Tensor] | None, metadata: dict[str, Any]) -> bytes:
        """The family's weights file: the network's ``state_dict`` (the fixed output layer
        included) with its architecture; ``load_model`` builds it."""
        return standard.to_bytes(model, released, {**metadata, "method": self.name})

    def save_private(self, model: AscentModel) -> dict[str, bytes]:
        """One family file: the float64 weights, with the ids and their λ as ``lethe.*`` tensors."""
        meta = {"private": "noise-free, with the dual coefficients; never served", "method": self.name, "init_norm": repr(model.init_norm)}
        return {"weights": standard.to_bytes(model, metadata=meta, extra={"ids": model.ids, "duals": model.duals})}

    def load_private(self, blobs: dict[str, bytes], cfg: GradientAscentConfig) -> AscentModel:
        """Read in float64 (``standard.from_bytes`` builds a float32 network: the λ accounting
        needs the exact weights), checked against the architecture like any family file."""
        data = blobs["weights"]
        meta = read_metadata(data)
        if meta.get("format") != standard.FORMAT or meta.get("method") != self.name:
            raise ConfigError(f"not a private {self.name} file (format {meta.get('format')!r}, method {meta.get('method')!r})")
        tensors = st_load(data)
        model = self.build(ModelSpec(meta["architecture"], json.loads(meta["architecture_config"])), cfg)
        state = {k: v for k, v in tensors.items() if not k.startswith("lethe.")}
        problems = standard.check_state_dict(model.network, state)
        if problems:
            raise InvalidDataError("the private weights do not fit the architecture: " + "; ".join(problems[:10]))
        model.network.load_state_dict({k: v.to(DTYPE) for k, v in state.items()})
        model.init_norm = float(meta.get("init_norm", "0.0"))
        model.ids, model.duals = tensors["lethe.ids"].to(torch.int64), tensors["lethe.duals"].to(DTYPE)
        return model
