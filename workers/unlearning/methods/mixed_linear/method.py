"""``mixed_linear``: exact forgetting on a mixed-linear model (Golatkar et al., CVPR 2021)."""

from __future__ import annotations

import math
import secrets
from typing import Any, ClassVar

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from workers.unlearning.bounds import Bound, exact_bound, information_bound
from workers.unlearning.core_training import train_cross_entropy
from workers.unlearning.data import TensorSource
from workers.unlearning.errors import ConfigError, InvalidDataError
from workers.unlearning.evaluation import evaluate, membership_inference_auc
from workers.unlearning.gates import GateResult, check_gates
from workers.unlearning.linearized import MixedLinearModel
from workers.unlearning.methods.base import ModelSpec
from workers.unlearning.methods.mixed_linear.config import MixedLinearConfig
from workers.unlearning.objective import GramState, Objective, Progress, SolveResult, gram_state, gram_sums
from workers.unlearning.serialization import load_model_from_bytes, to_bytes

REFINE_ITER_FACTOR = 10  # gate remedy 1: this many times the configured iteration budget


def _num_outputs(model: MixedLinearModel, source: TensorSource) -> int:
    x, _ = next(iter(source))
    expected = _input_shape(model)
    if expected is not None and tuple(x.shape[1:]) != expected:
        raise InvalidDataError(f"inputs have shape {tuple(x.shape[1:])} per sample, the network expects {expected}")
    try:
        out = model.core_output(x[:1])
    except RuntimeError as exc:  # shape mismatch inside the network
        raise InvalidDataError(f"inputs of shape {tuple(x.shape[1:])} per sample do not fit the network: {exc}") from exc
    if out.ndim != 2:
        raise InvalidDataError(f"the network returns shape {tuple(out.shape)}; a classifier must return (batch, classes)")
    return int(out.shape[1])


def _input_shape(model: MixedLinearModel) -> tuple[int, ...] | None:
    """The per-sample input shape of a built-in network, from its architecture config."""
    c = model.architecture_config
    if model.architecture == "mlp" and "in_features" in c:
        return None  # inputs are flattened: (in_features,) or any shape with that many values
    if model.architecture == "cnn" and {"in_channels", "height", "width"} <= set(c):
        return (int(c["in_channels"]), int(c["height"]), int(c["width"]))
    return None


def _check_scale(model: MixedLinearModel, cfg: MixedLinearConfig) -> None:
    """κ lives in the model (its targets) and in the config: they must agree, never silently."""
    if float(cfg.target_scale) != float(model.target_scale):
        raise ConfigError(
            f"cfg.target_scale={cfg.target_scale!r} but the model was built with target_scale={model.target_scale!r}: "
            "build the model with the config's κ (method.build or MixedLinearModel.build(..., target_scale=cfg.target_scale))"
        )


def _check(model: MixedLinearModel, source: TensorSource, what: str) -> None:
    if len(source) == 0:
        raise InvalidDataError(f"the {what} set is empty")
    source.validate(_num_outputs(model, source))


class MixedLinear:
    name: ClassVar[str] = "mixed_linear"
    guarantee: ClassVar[str] = "certified"
    families: ClassVar[frozenset[str]] = frozenset({"mixed_linear"})
    kinds: ClassVar[frozenset[str]] = frozenset({"samples"})
    config_cls: ClassVar[type[MixedLinearConfig]] = MixedLinearConfig
    # the noise-free weights (the start of the next job) and the Gram sums of the fitted set
    # (affine heads only: the next forget can downdate them); both are user data, never served
    private_artifacts: ClassVar[tuple[str, ...]] = ("weights", "gram")

    # -- the runner's interface (methods.base.ForgettingMethod) ---------------------------------
    def build(self, spec: ModelSpec, cfg: MixedLinearConfig) -> MixedLinearModel:
        return MixedLinearModel.build(spec.architecture, spec.architecture_config, spec.linearize, cfg.target_scale,
                                      device=cfg.device, dtype=cfg.dtype, seed=cfg.seed)

    def prepare(self, model: MixedLinearModel, core: TensorSource, cfg: MixedLinearConfig, progress: Progress = None) -> dict:
        return self.train_core(model, core, cfg, progress)

    def train(self, model: MixedLinearModel, user: TensorSource, cfg: MixedLinearConfig, progress: Progress = None) -> SolveResult:
        return self.fit(model, user, cfg, progress)

    def supports(self, operation: str) -> bool:
        return operation in ("zero", "retrain")

    def refine(self, cfg: MixedLinearConfig) -> MixedLinearConfig:
        """DESIGN §6.6, first remedy: more iterations, to a tolerance that meets the KL budget."""
        need = math.sqrt(2.0 * cfg.max_kl_per_release) * cfg.l2 * cfg.noise_std
        tol = min(cfg.tol, 0.5 * need) if need > 0 else cfg.tol * 1e-3
        return cfg.model_copy(update={"tol": max(tol, 1e-300), "max_iter": cfg.max_iter * REFINE_ITER_FACTOR})

    def gate(self, bound: Bound, parent_eval: dict | None, new_eval: dict | None, cfg: MixedLinearConfig) -> GateResult:
        return check_gates(bound, parent_eval, new_eval, cfg)

    def evaluate(self, model: MixedLinearModel, source: TensorSource, cfg: MixedLinearConfig) -> dict:
        return evaluate(model, source, cfg)

    def membership_auc(self, model: MixedLinearModel, forget: TensorSource, eval_: TensorSource, cfg: MixedLinearConfig) -> float:
        return membership_inference_auc(model, forget, eval_, cfg)

    def serve_bytes(self, model: MixedLinearModel, released: dict[str, torch.Tensor] | None, metadata: dict[str, Any]) -> bytes:
        return to_bytes(model, user_override=released, metadata=metadata)

    def save_private(self, model: MixedLinearModel) -> dict[str, bytes]:
        out = {"weights": to_bytes(model, metadata={"private": "noise-free; never served"})}
        if model.fitted_gram is not None:
            out["gram"] = st_save(model.fitted_gram.to_tensors(), metadata={"private": "Gram sums of the fitted set; never served"})
        return out

    def load_private(self, blobs: dict[str, bytes], cfg: MixedLinearConfig) -> MixedLinearModel:
        model = load_model_from_bytes(blobs["weights"], device=cfg.device, dtype=cfg.dtype)
        if "gram" in blobs:
            model.fitted_gram = GramState.from_tensors(st_load(blobs["gram"]), device=model.device_)
        return model

    # -- core ------------------------------------------------------------------------------
    def train_core(self, model: MixedLinearModel, core: TensorSource, cfg: MixedLinearConfig, progress: Progress = None) -> dict:
        """Cross-entropy on the core split only (Adam, deterministic given ``cfg.seed``).
        The user weights are reset to 0: they are defined relative to the core."""
        _check(model, core, "core")
        model.network.to(dtype=model.train_dtype)  # mixed: the whole network trains in float32, the head goes back to float64
        try:
            out = train_cross_entropy(model.network, core, epochs=cfg.core_epochs, lr=cfg.core_lr, batch_size=cfg.core_batch_size,
                                      seed=cfg.seed, device=model.device_, dtype=model.train_dtype, progress=progress)
        finally:
            model._cast()
        model.zero_user()
        model.fitted_gram = None  # features changed: old sums no longer describe this model
        return out

    # -- user weights --------------------------------------------------------------------------
    def _solve(self, model, source, cfg, start, progress) -> SolveResult:
        _check_scale(model, cfg)
        _check(model, source, "training" if start is None else "retained")
        # float32 CG products only where asked (None: the model's dtype; the gradient and the residual stay in it)
        fast = torch.float32 if cfg.pass_dtype == "float32" else None
        obj = Objective(model, source, cfg.l2, precondition=cfg.precondition, cache_bytes=cfg.cache_bytes, pass_dtype=fast)
        w0 = start if start is not None else {k: torch.zeros_like(v) for k, v in model.user.items()}
        w, res = obj.minimise(w0, tol=cfg.tol, max_iter=cfg.max_iter, max_newton_steps=cfg.max_newton_steps, progress=progress)
        model.user = w
        # the Gram sums of the set just solved on (affine heads): keep them privately and the
        # next forget is ``forget_downdate`` at a cost that grows with the forgotten samples only
        model.fitted_gram = obj.gram_sums
        res.operation = "fit" if start is None else "forget"
        return res

    def fit(self, model: MixedLinearModel, user: TensorSource, cfg: MixedLinearConfig, progress: Progress = None) -> SolveResult:
        """Solve ∇L_{D_u}(w) = 0 from w = 0."""
        return self._solve(model, user, cfg, None, progress)

    def forget(
        self, model: MixedLinearModel, retained: TensorSource, cfg: MixedLinearConfig, progress: Progress = None,
        removed: TensorSource | None = None,
    ) -> SolveResult:
        """Newton from the current w on D_r: w' = w − H_{D_r}⁻¹ ∇L_{D_r}(w) (exact: L is quadratic).

        With the fitted set's Gram sums kept (``model.fitted_gram``, an affine head) and ids on
        ``retained`` and ``removed``, the retained set's sums are built by downdating, at a cost
        in proportion to the change: ``fitted − (fitted ∖ D_r) + (D_r ∖ fitted)`` by sample id (new
        samples since the fit are added). It applies only when every fitted sample missing from
        D_r is among ``removed``; otherwise D_r's Gram is rebuilt from all of it. Same result."""
        plan = self._downdate_plan(model, retained, removed)
        if plan is None:
            return self._solve(model, retained, cfg, {k: v.clone() for k, v in model.user.items()}, progress)
        gone, added = plan
        fitted = model.fitted_gram
        if len(added):
            _check(model, added, "retained")
            fitted = fitted + gram_state(model, added)  # the plan checked the kept sums fit the model (rows iff a prefix)
        res, _ = self.forget_downdate(model, fitted, gone, cfg, progress)
        res.path = "gram-downdate"
        return res

    @staticmethod
    def _downdate_plan(model: MixedLinearModel, retained: TensorSource, removed: TensorSource | None):
        """(samples to subtract, samples to add) when kept sums can serve D_r, else None."""
        fitted = model.fitted_gram
        if fitted is None or fitted.ids is None or retained.ids is None or len(retained) == 0:
            return None
        if not MixedLinear._sums_fit_the_model(model, fitted):
            return None  # kept under another prefix precision, or without rows: rebuild D_r's sums from its samples
        if removed is not None and len(removed) and removed.ids is None:
            return None
        kept = fitted.ids.cpu()
        r_ids = retained.ids.to(torch.int64).cpu()
        gone_ids = kept[~torch.isin(kept, r_ids)]
        add_pos = (~torch.isin(r_ids, kept)).nonzero().reshape(-1)
        if removed is None or not len(removed):
            if gone_ids.numel():
                return None
            gone = retained.subset(torch.zeros(0, dtype=torch.int64))  # no inputs read
        else:
            rm_ids = removed.ids.to(torch.int64).cpu()
            if not bool(torch.isin(gone_ids, rm_ids).all()):
                return None  # a fitted sample left D_r without being among the removed: rebuild
            gone = removed.subset(torch.isin(rm_ids, gone_ids).nonzero().reshape(-1))
        if gone_ids.numel() + add_pos.numel() >= len(retained):
            return None  # downdating would cost as much as rebuilding
        return gone, retained.subset(add_pos)

    def forget_downdate(
        self, model: MixedLinearModel, fitted: GramState | None, removed: TensorSource, cfg: MixedLinearConfig, progress: Progress = None
    ) -> tuple[SolveResult, GramState]:
        """The same Newton step, for an affine head whose training-set Gram sums were kept: the
        retained set's statistics are ``fitted − removed``, so the cost grows with the forgotten
        samples, not with N. ``fitted=None`` uses ``model.fitted_gram`` (set by the last
        fit/forget/retrain in this process). ``removed`` must be samples of that fitted set.
        Returns the result and the retained set's Gram sums (keep them privately for the next
        forget)."""
        _check_scale(model, cfg)
        if fitted is None:
            fitted = model.fitted_gram
        if fitted is None:
            raise InvalidDataError("no Gram sums of the fitted set: fit first, or pass them (GramState.from_tensors)")
        if not self._sums_fit_the_model(model, fitted):
            raise InvalidDataError(
                "the kept Gram sums were computed under another prefix precision than this model's "
                f"({model.precision!r}), or kept without their feature rows: refit to downdate"
            )
        gone = self._removed_ids(fitted, removed)
        if len(removed) >= fitted.n:
            raise InvalidDataError("the retained set would be empty")
        if len(removed):
            removed.validate(_num_outputs(model, removed))
            retained = fitted - gram_sums(model, self._removed_features(model, fitted, removed, gone), ids=gone)
        else:
            retained = fitted
        obj = Objective.from_gram(model, retained, cfg.l2)
        w, res = obj.minimise({k: v.clone() for k, v in model.user.items()}, tol=cfg.tol, max_iter=cfg.max_iter,
                              max_newton_steps=cfg.max_newton_steps, progress=progress)
        model.user = w
        model.fitted_gram = retained
        res.operation = "forget"
        return res, retained

    @staticmethod
    def _sums_fit_the_model(model: MixedLinearModel, fitted: GramState) -> bool:
        """A prefix recomputes features only up to its rounding (float64 too: it depends on the
        batch shape), so sums are downdated by kept rows alone (sums kept without rows, as before
        issue 16b for float64, are rebuilt); kept rows serve only a model whose prefix computes in
        their dtype."""
        if fitted.F is None:
            return not model.keeps_features
        return model.keeps_features and fitted.F.dtype == model.prefix_dtype_

    @staticmethod
    def _removed_features(model: MixedLinearModel, fitted: GramState, removed: TensorSource, gone: torch.Tensor):
        """(features, labels) chunks of the removed samples: the kept rows, in the order of ``gone``
        (their sorted ids), when the sums kept their features (exactly what was added: every
        model with a prefix keeps them, :meth:`_sums_fit_the_model`); else — no prefix, the
        features are the inputs themselves, reproduced exactly — computed again."""
        if fitted.F is None:  # sums only: row order does not matter
            yield from ((model.features(x), y) for x, y in removed)
            return
        feats, y = fitted.features_of(gone), removed.y[torch.argsort(removed.ids.to(torch.int64).cpu(), stable=True)]
        for i in range(0, len(gone), removed.chunk_size):
            yield feats[i : i + removed.chunk_size].to(model.device_, model.dtype_), y[i : i + removed.chunk_size]

    @staticmethod
    def _removed_ids(fitted: GramState, removed: TensorSource) -> torch.Tensor:
        """The removed samples' ids, checked against the fitted set's (sorted) ids: every one must
        be in it, once. A sample removed before is no longer in it, so removing it twice is refused."""
        if fitted.ids is None:
            raise InvalidDataError("the kept Gram sums have no sample ids: refit to downdate them")
        if len(removed) == 0:
            return torch.zeros(0, dtype=torch.int64)
        if removed.ids is None:
            raise InvalidDataError("the removed samples need their ids (TensorSource(..., ids=...) or source.subset(index))")
        ids = torch.sort(removed.ids.to(torch.int64).cpu()).values
        if ids.numel() > 1 and bool((ids[1:] == ids[:-1]).any()):
            raise InvalidDataError("the removed samples repeat an id: each sample can be removed once")
        known = fitted.ids.cpu()
        pos = torch.searchsorted(known, ids).clamp(max=max(known.numel() - 1, 0))
        missing = ids[known[pos] != ids] if known.numel() else ids
        if missing.numel():
            raise InvalidDataError(
                f"{missing.numel()} removed sample(s) are not in the fitted set (never fitted, or removed already), "
                f"e.g. id {int(missing[0])}: the Gram sums cannot be downdated by them"
            )
        return ids

    def zero(self, model: MixedLinearModel) -> SolveResult:
        model.zero_user()
        return SolveResult(iterations=0, residual_norm=0.0, converged=True, seconds=0.0, operation="zero")

    def retrain(
        self,
        model: MixedLinearModel,
        retained: TensorSource,
        cfg: MixedLinearConfig,
        core_source: TensorSource | None = None,
        progress: Progress = None,
    ) -> SolveResult:
        """Fit from w = 0 on D_r; with ``core_source`` the core is retrained first (from a fresh
        initialisation, so no trace of removed core samples survives)."""
        if core_source is not None:
            fresh = MixedLinearModel.build(
                model.architecture, model.architecture_config, model.linearize, model.target_scale, device=model.device_,
                dtype=model.precision, seed=cfg.seed,
            ) if model.architecture else None
            if fresh is not None:
                with torch.no_grad():
                    for p, q in zip(model.network.parameters(), fresh.network.parameters(), strict=True):
                        p.copy_(q)
            self.train_core(model, core_source, cfg, progress)
            model._split()
        res = self._solve(model, retained, cfg, None, progress)
        res.operation = "retrain"
        return res

    # -- release -------------------------------------------------------------------------------
    def bound(self, result: SolveResult, cfg: MixedLinearConfig, *, exact: bool | None = None, method: str | None = None) -> Bound:
        """The information bound of releasing these weights with ``cfg.noise_std`` (DESIGN §6.5).

        ``zero`` and ``retrain`` results are ``exact`` (KL 0: the weights are a function of the
        retained data only); ``fit``/``forget`` results are ``certified`` by the residual.
        ``exact=True`` forces the exact form (the caller vouches, e.g. after a core retrain);
        ``exact=False`` forces the certified form."""
        if exact is None:
            exact = result.operation in ("zero", "retrain")
        if exact:
            name = method or (result.operation if result.operation in ("zero", "retrain") else "retrain")
            return exact_bound(name, cfg.l2, cfg.noise_std, result.iterations, result.residual_norm)
        # the certified residual: the computed ‖∇L‖ plus its rigorous floating-point error
        # (Gram path: rounding of the kept sums and of their downdates; SolveResult.residual_error)
        certified = result.residual_norm + getattr(result, "residual_error", 0.0)
        return information_bound(certified, cfg.l2, cfg.noise_std, method=self.name, guarantee=self.guarantee, iterations=result.iterations)

    def release(self, model: MixedLinearModel, cfg: MixedLinearConfig) -> dict[str, torch.Tensor]:
        """User weights + s·ξ, ξ ~ N(0, I) from a fresh OS-random seed that is never kept."""
        gen = torch.Generator(device="cpu").manual_seed(secrets.randbits(63))
        out = {}
        for name, w in model.user_parameters().items():
            noise = torch.randn(w.shape, generator=gen, dtype=torch.float64)
            out[name] = (w.detach().cpu().to(torch.float64) + cfg.noise_std * noise).to(w.dtype)
        del gen
        return out
