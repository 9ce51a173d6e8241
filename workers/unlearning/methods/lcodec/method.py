"""``lcodec``: L-CODEC subset Newton (Mehta et al., CVPR 2022) on a ``standard`` network (DESIGN §14.1).

1. Perturb the forgotten inputs P times (x + 0.1·std·ξ, std per input feature of the training
   inputs); record the batch's mean loss and each unit's mean activation (Linear: per output
   unit, mean over the batch; Conv2d: per channel, mean over batch and space).
2. Pick a Markov blanket of units by forward stepwise selection with the CODEC statistic
   (:mod:`.codec`), among the ``max_candidate_units`` units with the largest unconditional T.
3. θ_S (the selected units' weight rows / filters and biases) takes Sekhari et al.'s step
   θ_S ← θ_S + (1/(n−m))·(H_{r,S} + λI)⁻¹·Σ_{i∈D_f} ∇_{θ_S} ℓ_i, H_{r,S} applied by exact
   Hessian-vector products (double backward, float64 on CPU) over the retained data and
   inverted by CG; negative curvature → λ ×10 and CG restarts.
4. The release adds N(0, σ²) to θ_S only, σ = (γ/ε)·√(2 ln(1.25/δ)), γ = 2·M·L²·m²/(λ³·n²),
   m = the number of samples removed in this batch, n = |D| before it.

The assumptions behind σ (a convex, smooth loss) do not hold for deep networks: the guarantee is
``heuristic`` and every release is gated on measured evaluation (:mod:`workers.unlearning.gates`).
Pitfalls of the public code avoided here: gradients are fresh tensors summed out of place (never
stored by reference and doubled in place); parameters are keyed by their ``named_parameters``
names (never a module's repr); m counts every removed sample of the batch; a step that is not
applied (CG failed) is reported as such (``applied=False``) and fails the gates.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from workers.unlearning import standard
from workers.unlearning.bounds import Bound, exact_bound
from workers.unlearning.data import TensorSource
from workers.unlearning.errors import InvalidDataError
from workers.unlearning.gates import GateResult, check_measured_gates
from workers.unlearning.methods.base import ModelSpec
from workers.unlearning.methods.lcodec.codec import codec, forward_select
from workers.unlearning.methods.lcodec.config import LCodecConfig
from workers.unlearning.standard import StandardModel

PERTURBATION_SCALE = 0.1  # × each input feature's standard deviation (fixed by the issue)
DAMPING_FACTOR = 10.0


@dataclass
class RemovalResult:
    """What a train, forget or retrain did; ``to_dict`` goes into the job's checkpoint."""

    operation: str = "forget"
    iterations: int = 0
    residual_norm: float = 0.0  # CG's relative residual ‖(H+λI)d − g‖/‖g‖
    converged: bool = True
    applied: bool = True
    seconds: float = 0.0
    n: int = 0  # |D| before the removal
    m: int = 0  # samples removed in this batch
    sigma: float = 0.0
    damping: float = 0.0  # λ the solve used (≥ the configured one after negative curvature)
    damping_increases: int = 0
    units: list[str] = field(default_factory=list)  # "module.name[j]" of the selected units
    parameters_selected: int = 0
    step_norm: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def sekhari_sigma(m: int, n: int, cfg: LCodecConfig) -> float:
    """σ = (γ/ε)·√(2 ln(1.25/δ)), γ = 2·M·L²·m²/(λ³·n²) with the configured λ."""
    gamma = 2.0 * cfg.hessian_lipschitz * cfg.gradient_lipschitz**2 * m**2 / (cfg.damping**3 * n**2)
    return gamma / cfg.epsilon * math.sqrt(2.0 * math.log(1.25 / cfg.delta))


# ----------------------------------------------------------------------------- step 1-2
def unit_modules(network: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Linear and Conv2d, by its ``named_modules`` name (unique, unlike a repr)."""
    return [(name, mod) for name, mod in network.named_modules() if isinstance(mod, (nn.Linear, nn.Conv2d))]


def perturbed_statistics(model: StandardModel, forget: TensorSource, feature_std: torch.Tensor, perturbations: int,
                         seed: int) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """(losses (P,), activations (P, units), units [(module name, index)]) over P perturbed
    copies of the forgotten batch."""
    modules = unit_modules(model.network)
    if not modules:
        raise InvalidDataError("the network has no Linear or Conv2d layer: lcodec has no units to select")
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(mod, _inp, out):
            o = out.detach().to(torch.float64)
            # per sample: a conv channel's mean over space, a linear unit's mean over extra dims
            per = o.mean(dim=(2, 3)) if isinstance(mod, nn.Conv2d) else o.reshape(o.shape[0], -1, o.shape[-1]).mean(dim=1)
            sums[name] = per.sum(dim=0) if name not in sums else sums[name] + per.sum(dim=0)
        return record

    handles = [mod.register_forward_hook(hook(name)) for name, mod in modules]
    gen = torch.Generator().manual_seed(seed)
    m = len(forget)
    losses, acts = [], []
    try:
        with torch.no_grad():
            for _ in range(perturbations):
                sums.clear()
                total = 0.0
                for x, y in forget:
                    noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
                    xp = (x.to(torch.float64) + PERTURBATION_SCALE * feature_std * noise).to(torch.float32)
                    total += float(F.cross_entropy(model(xp), y.to(model.device_), reduction="sum"))
                losses.append(total / m)
                acts.append(torch.cat([sums[name].cpu() / m for name, _ in modules]).numpy())
    finally:
        for h in handles:
            h.remove()
    units = [(name, j) for name, mod in modules for j in range(mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels)]
    return np.asarray(losses), np.stack(acts), units


def select_units(losses: np.ndarray, acts: np.ndarray, cfg: LCodecConfig) -> list[int]:
    """The Markov blanket: the top ``max_candidate_units`` by unconditional T(loss; a_j), then
    forward stepwise selection among them (at most ``max_selected_units``)."""
    varying = np.flatnonzero(acts.std(axis=0) > 0)
    scores = np.array([codec(losses, acts[:, j], seed=0) for j in varying])
    keep = np.isfinite(scores)
    varying, scores = varying[keep], scores[keep]
    if not len(varying):
        return []
    candidates = varying[np.argsort(-scores, kind="stable")[: cfg.max_candidate_units]]
    chosen = forward_select(losses, acts[:, candidates], max_selected=cfg.max_selected_units, seed=0)
    return [int(candidates[c]) for c in chosen]


def selection_masks(model: StandardModel, units: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
    """Parameter name → bool mask of θ_S: a Linear unit's weight row and bias, a conv channel's
    filter and bias."""
    params = model.parameters()
    masks: dict[str, torch.Tensor] = {}
    for module_name, j in units:
        for leaf in ("weight", "bias"):
            pname = f"{module_name}.{leaf}" if module_name else leaf
            if pname not in params:
                continue
            mask = masks.setdefault(pname, torch.zeros_like(params[pname], dtype=torch.bool))
            mask[j] = True
    return masks


# ----------------------------------------------------------------------------- step 3
class RestrictedHessian:
    """v ↦ H_{r,S} v = P_S (1/|D_r| Σ_{D_r} ∇²CE_i + wd·I) P_S v, by double backward over the
    retained data in chunks, in ``dtype`` (float64 on CPU)."""

    def __init__(self, model: StandardModel, retained: TensorSource, masks: dict[str, torch.Tensor], weight_decay: float,
                 dtype: torch.dtype) -> None:
        self.model, self.retained, self.masks, self.wd, self.dtype = model, retained, masks, weight_decay, dtype
        self.params = {k: v.detach().to(dtype) for k, v in model.parameters().items()}
        self.buffers = {k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in model.network.named_buffers()}
        self.names = sorted(masks)

    def loss_sum(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model.network, (params, self.buffers), (x.to(self.model.device_, self.dtype),))
        return F.cross_entropy(out, y.to(self.model.device_), reduction="sum")

    def grad_sum(self, source: TensorSource) -> dict[str, torch.Tensor]:
        """Σ_{i∈source} ∇_{θ_S} ℓ_i with ℓ_i = CE_i + (wd/2)‖θ‖²: fresh tensors, summed out of place."""
        total = {k: torch.zeros_like(self.params[k]) for k in self.names}
        for x, y in source:
            p = {k: v.clone().requires_grad_(k in self.masks) for k, v in self.params.items()}
            grads = torch.autograd.grad(self.loss_sum(p, x, y), [p[k] for k in self.names])
            total = {k: total[k] + g for k, g in zip(self.names, grads, strict=True)}
        return {k: (total[k] + len(source) * self.wd * self.params[k]) * self.masks[k] for k in self.names}

    def __call__(self, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        total = {k: torch.zeros_like(self.params[k]) for k in self.names}
        for x, y in self.retained:
            p = {k: t.clone().requires_grad_(k in self.masks) for k, t in self.params.items()}
            leaves = [p[k] for k in self.names]
            grads = torch.autograd.grad(self.loss_sum(p, x, y), leaves, create_graph=True)
            dot = sum((g * (v[k] * self.masks[k])).sum() for k, g in zip(self.names, grads, strict=True))
            hv = torch.autograd.grad(dot, leaves)
            total = {k: total[k] + h.detach() for k, h in zip(self.names, hv, strict=True)}
        n = len(self.retained)
        return {k: (total[k] / n + self.wd * v[k]) * self.masks[k] for k in self.names}


def _dot(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum((a[k] * b[k]).sum() for k in a))


def cg(apply, b: dict[str, torch.Tensor], damping: float, tol: float, max_iter: int) -> tuple[dict[str, torch.Tensor], int, float, bool]:
    """Solve (A + damping·I) x = b. Returns (x, iterations, relative residual, negative
    curvature met). Stops at ‖r‖ ≤ tol·‖b‖."""
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    r = {k: v.clone() for k, v in b.items()}
    p = {k: v.clone() for k, v in r.items()}
    bnorm = math.sqrt(_dot(b, b))
    if bnorm == 0.0:
        return x, 0, 0.0, False
    rr = _dot(r, r)
    for it in range(1, max_iter + 1):
        ap = apply(p)
        ap = {k: ap[k] + damping * p[k] for k in p}
        pap = _dot(p, ap)
        if not pap > 0.0:  # negative (or zero, or NaN) curvature along p
            return x, it, math.sqrt(rr) / bnorm, True
        alpha = rr / pap
        x = {k: x[k] + alpha * p[k] for k in x}
        r = {k: r[k] - alpha * ap[k] for k in r}
        rr_new = _dot(r, r)
        if math.sqrt(rr_new) <= tol * bnorm:
            return x, it, math.sqrt(rr_new) / bnorm, False
        p = {k: r[k] + (rr_new / rr) * p[k] for k in r}
        rr = rr_new
    return x, max_iter, math.sqrt(rr) / bnorm, False


def removal_step(model: StandardModel, retained: TensorSource, removed: TensorSource, masks: dict[str, torch.Tensor],
                 cfg: LCodecConfig) -> tuple[dict[str, torch.Tensor], RemovalResult]:
    """The update Δθ_S = (1/(n−m))·(H_{r,S} + λI)⁻¹·Σ_{D_f} ∇_{θ_S} ℓ_i (not applied here)."""
    dtype = torch.float64 if model.device_.type == "cpu" else torch.float32
    hess = RestrictedHessian(model, retained, masks, cfg.weight_decay, dtype)
    g = hess.grad_sum(removed)
    damping, increases, iters = float(cfg.damping), 0, 0
    while True:
        d, it, rel, negative = cg(hess, g, damping, cfg.cg_tol, cfg.cg_max_iter)
        iters += it
        if not negative or increases >= cfg.max_damping_increases:
            break
        damping *= DAMPING_FACTOR
        increases += 1
    n_r = len(retained)
    step = {k: d[k] / n_r for k in d}
    converged = not negative and rel <= cfg.cg_tol
    res = RemovalResult(iterations=iters, residual_norm=rel, converged=converged, n=n_r + len(removed), m=len(removed),
                        damping=damping, damping_increases=increases,
                        parameters_selected=int(sum(int(m.sum()) for m in masks.values())),
                        step_norm=math.sqrt(_dot(step, step)))
    return step, res


# ----------------------------------------------------------------------------- the method
class LCodec:
    name: ClassVar[str] = "lcodec"
    guarantee: ClassVar[str] = "heuristic"
    families: ClassVar[frozenset[str]] = frozenset({"standard"})
    kinds: ClassVar[frozenset[str]] = frozenset({"samples"})
    config_cls: ClassVar[type[LCodecConfig]] = LCodecConfig
    # the noise-free weights with the last step's θ_S masks and σ (the release noises those)
    private_artifacts: ClassVar[tuple[str, ...]] = ("weights",)

    def build(self, spec: ModelSpec, cfg: LCodecConfig) -> StandardModel:
        return standard.build(spec.architecture, spec.architecture_config, cfg)

    def prepare(self, model: StandardModel, core: TensorSource, cfg: LCodecConfig, progress=None) -> dict:
        """A ``standard`` network trains on its ``user`` split only (every sample belongs to a
        subject, so every sample can be forgotten); samples in ``core`` are refused."""
        if len(core):
            raise InvalidDataError(f"a standard-family model trains on its user split; {len(core)} core samples are not used: upload them as user samples")
        return {"seconds": 0.0}

    def train(self, model: StandardModel, user: TensorSource, cfg: LCodecConfig, progress=None) -> RemovalResult:
        out = standard.train(model, user, cfg, progress)
        model.selection, model.sigma = None, 0.0
        return RemovalResult(operation="train", seconds=out["seconds"], n=len(user), applied=False)

    def retrain(self, model: StandardModel, retained: TensorSource, cfg: LCodecConfig, core_source: TensorSource | None = None,
                progress=None) -> RemovalResult:
        """The recipe from a fresh initialisation (``cfg.seed``) on D_r: nothing of the removed
        samples survives."""
        if core_source is not None:
            self.prepare(model, core_source, cfg)
        fresh = standard.build(model.architecture, model.architecture_config, cfg)
        with torch.no_grad():
            for p, q in zip(model.network.parameters(), fresh.network.parameters(), strict=True):
                p.copy_(q)
        res = self.train(model, retained, cfg, progress)
        res.operation = "retrain"
        return res

    def forget(self, model: StandardModel, retained: TensorSource, cfg: LCodecConfig, progress=None,
               removed: TensorSource | None = None) -> RemovalResult:
        """Steps 1-3 of §14.1 for the batch ``removed`` (D_f); ``retained`` is D_r."""
        start = time.perf_counter()
        if removed is None or len(removed) == 0:
            raise InvalidDataError("lcodec forgets by the removed samples: pass them (removed=...)")
        if len(retained) == 0:
            raise InvalidDataError("the retained set is empty: retrain instead")
        standard.check_data(model, removed, "forgotten")
        standard.check_data(model, retained, "retained")
        feature_std = retained.x.to(torch.float64).std(dim=0) if len(retained) > 1 else torch.zeros(retained.x.shape[1:], dtype=torch.float64)
        losses, acts, units = perturbed_statistics(model, removed, feature_std, cfg.perturbations, cfg.seed)
        if progress is not None:
            progress({"phase": "select", "units": len(units)})
        chosen = [units[j] for j in select_units(losses, acts, cfg)]
        masks = selection_masks(model, chosen)
        if progress is not None:
            progress({"phase": "newton", "selected": len(chosen)})
        step, res = removal_step(model, retained, removed, masks, cfg)
        res.units = [f"{name}[{j}]" for name, j in chosen]
        res.sigma = sekhari_sigma(len(removed), len(retained) + len(removed), cfg)
        if res.converged and math.isfinite(res.step_norm) and chosen:
            params = model.parameters()
            with torch.no_grad():
                for k, d in step.items():
                    params[k].add_(d.to(params[k].dtype))
            model.selection, model.sigma = masks, res.sigma
        else:  # not applied: nothing was removed, and the gates must say so
            res.applied = False
            model.selection, model.sigma = None, 0.0
        res.seconds = time.perf_counter() - start
        return res

    def supports(self, operation: str) -> bool:
        return operation in ("retrain", "import_checkpoint")  # a standard network has no "zero" that keeps it useful

    def import_checkpoint(self, spec: ModelSpec, data: bytes, cfg: LCodecConfig) -> StandardModel:
        """An uploaded ``state_dict`` (safetensors), checked against the architecture."""
        model = standard.from_bytes(data, device=cfg.device, architecture=spec.architecture, architecture_config=spec.architecture_config)
        model.selection, model.sigma = None, 0.0  # an upload carries no removal step
        return model

    # -- release ------------------------------------------------------------------------------
    def bound(self, result: RemovalResult, cfg: LCodecConfig, *, exact: bool | None = None, method: str | None = None) -> Bound:
        """``retrain``: exact. Otherwise ``heuristic``: no finite information bound (kl = ∞);
        the record carries σ, λ and CG's relative residual (∞ when the step was not applied)."""
        op = getattr(result, "operation", "forget")
        if exact or (exact is None and op == "retrain"):
            return exact_bound(method or "retrain", 0.0, 0.0, result.iterations)
        residual = getattr(result, "residual_norm", 0.0) if getattr(result, "applied", True) or op != "forget" else math.inf
        return Bound(method=self.name, guarantee=self.guarantee, residual_norm=float(residual), mu=float(getattr(result, "damping", 0.0)),
                     noise_std=float(getattr(result, "sigma", 0.0)), iterations=int(getattr(result, "iterations", 0)),
                     kl_nats=math.inf, kl_bits=math.inf)

    def refine(self, cfg: LCodecConfig) -> None:
        return None  # a failed gate goes straight to the retrain fallback

    def gate(self, bound: Bound, parent_eval: dict | None, new_eval: dict | None, cfg: LCodecConfig) -> GateResult:
        result = check_measured_gates(parent_eval, new_eval, cfg)
        if not (bound.residual_norm <= cfg.cg_tol):
            result.ok = False
            result.reasons.insert(0, f"the removal step was not applied (CG relative residual {bound.residual_norm:.3g} > cg_tol {cfg.cg_tol:.3g}, or negative curvature)")
        return result

    def release(self, model: StandardModel, cfg: LCodecConfig) -> dict[str, torch.Tensor] | None:
        """θ with N(0, σ²) added to θ_S only, from a fresh OS-random seed that is never kept."""
        if not model.selection or model.sigma <= 0.0:
            return None
        gen = torch.Generator(device="cpu").manual_seed(secrets.randbits(63))
        params = model.parameters()
        out = {}
        for k, mask in model.selection.items():
            w = params[k].detach().cpu().to(torch.float64)
            noise = torch.randn(w.shape, generator=gen, dtype=torch.float64) * mask.cpu()
            out[k] = (w + model.sigma * noise).to(params[k].dtype)
        del gen
        return out

    def evaluate(self, model: StandardModel, source: TensorSource, cfg: LCodecConfig) -> dict:
        return standard.evaluate(model, source)

    def membership_auc(self, model: StandardModel, forget: TensorSource, eval_: TensorSource, cfg: LCodecConfig) -> float:
        return standard.membership_auc(model, forget, eval_)

    def serve_bytes(self, model: StandardModel, released: dict[str, torch.Tensor] | None, metadata: dict[str, Any]) -> bytes:
        return standard.to_bytes(model, released, {**metadata, "method": self.name})

    def save_private(self, model: StandardModel) -> dict[str, bytes]:
        extra = {f"mask.{k}": m.to(torch.uint8) for k, m in (model.selection or {}).items()}
        meta = {"private": "noise-free; never served", "sigma": repr(float(model.sigma))}
        return {"weights": standard.to_bytes(model, metadata=meta, extra=extra)}

    def load_private(self, blobs: dict[str, bytes], cfg: LCodecConfig) -> StandardModel:
        return standard.from_bytes(blobs["weights"], device=cfg.device)
