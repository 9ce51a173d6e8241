"""``certified_removal``: a frozen feature extractor plus a linear head trained with a secret
objective perturbation, forgotten by one Newton step with an (ε, δ) certificate and a budget that
retrains the head when spent (Guo et al., ICML 2020; DESIGN §6.8 family ``linear_head``, §14.4).

The model (:class:`LinearHeadModel`) is an extractor from the architecture registry (the network
minus its last ``nn.Linear``), trained by cross-entropy on the ``core`` split only (or kept at the
architecture's seeded initial weights with ``core_epochs=0``, or taken from an uploaded checkpoint
by :meth:`CertifiedRemoval.import_checkpoint`), and C one-vs-rest heads over its
features scaled per sample to norm ≤ 1 (a constant 1 appended first, as the bias). The user
samples' features are computed once and kept privately (artifact ``features``, by sample id) with
the head's state (artifact ``state``: extractor, w, the secret b, the ledger β); purge deletes both.

What the certificate says: each release is (ε_spent, δ)-indistinguishable from a head retrained
without the removed data. Releases between two retrains share b, so the statement holds per
release, not for an observer combining several; β already accumulates every removal since the
retrain, so a release reports the latest ε_spent, never a sum over releases.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from workers.unlearning.bounds import Bound
from workers.unlearning.core_training import train_cross_entropy
from workers.unlearning.data import TensorSource
from workers.unlearning.errors import ConfigError, InvalidDataError
from workers.unlearning.files import read_metadata
from workers.unlearning.evaluation import auc
from workers.unlearning.gates import GateResult
from workers.unlearning.linearized import resolve_device
from workers.unlearning.methods.base import ModelSpec
from workers.unlearning.methods.certified_removal import head as H
from workers.unlearning.methods.certified_removal.config import CertifiedRemovalConfig
from workers.unlearning.networks import Builder, build_network, resolve_architecture
from workers.unlearning.objective import Progress, SolveResult
from workers.unlearning.standard import require_state_dict

FORMAT = "lethe.linear_head/1"
STATEMENT = "per release"  # releases between retrains share b (DESIGN §14.4)


def _split(net: nn.Module) -> tuple[nn.Module, nn.Linear]:
    if not (isinstance(net, nn.Sequential) and len(net) and isinstance(net[-1], nn.Linear)):
        raise ConfigError("a linear_head model needs an architecture that is an nn.Sequential ending in nn.Linear (the head)")
    return net[:-1], net[-1]


class LinearHeadNet(nn.Module):
    """The served model: scores = W · scale([φ(x), 1]) (one column per class)."""

    def __init__(self, extractor: nn.Module, w: torch.Tensor) -> None:
        super().__init__()
        self.extractor = extractor
        self.register_buffer("w", w.to(torch.float64))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            phi = self.extractor(x.to(torch.float64)).reshape(len(x), -1)
        return H.scale_features(torch.cat([phi, torch.ones(len(x), 1, dtype=torch.float64)], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) @ self.w.T

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).argmax(dim=1)


class LinearHeadModel:
    """The method's model object: extractor + head state + the user samples' kept features."""

    def __init__(self, architecture: str, architecture_config: dict, extractor: nn.Module, num_classes: int) -> None:
        self.architecture, self.architecture_config = architecture, dict(architecture_config)
        self.extractor = extractor.to(torch.float64).eval()
        self.num_classes = int(num_classes)
        self.head: H.HeadState | None = None
        # the fitted set's features, by id (sorted): computed once, kept privately
        self.ids: torch.Tensor | None = None
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None

    @classmethod
    def build(cls, architecture: str, architecture_config: dict, seed: int = 0,
              architectures: Mapping[str, Builder] | None = None) -> "LinearHeadModel":
        torch.manual_seed(seed)
        net = build_network(architecture, architecture_config, architectures=architectures)
        extractor, last = _split(net)
        return cls(architecture, architecture_config, extractor, last.out_features)

    def net(self, w: torch.Tensor | None = None) -> LinearHeadNet:
        if w is None:
            w = self.head.w if self.head is not None else torch.zeros(self.num_classes, 1)
        return LinearHeadNet(self.extractor, w)

    def features(self, source: TensorSource) -> torch.Tensor:
        net = self.net()
        out = [net.features(x) for x, _ in source]
        return torch.cat(out) if out else torch.zeros(0, 1, dtype=torch.float64)


def _budget(cfg: CertifiedRemovalConfig) -> H.Budget:
    return H.Budget(cfg.epsilon, cfg.delta, cfg.noise_std)


def _check(model: LinearHeadModel, source: TensorSource, what: str) -> None:
    if len(source) == 0:
        raise InvalidDataError(f"the {what} set is empty")
    source.validate(model.num_classes)


@dataclass
class CertifiedResult(SolveResult):
    """A ``SolveResult`` with the ledger after the operation."""

    beta: float = 0.0  # β since the last (re)training, training residual included
    beta_step: float = 0.0  # this operation's share of β
    removals_since_retrain: int = 0
    retrains: int = 0
    retrain_reason: str = ""  # "budget exhausted" | "new samples" | "after zero" | ""


class CertifiedRemoval:
    name: ClassVar[str] = "certified_removal"
    guarantee: ClassVar[str] = "certified"
    families: ClassVar[frozenset[str]] = frozenset({"linear_head"})
    kinds: ClassVar[frozenset[str]] = frozenset({"samples"})
    config_cls: ClassVar[type[CertifiedRemovalConfig]] = CertifiedRemovalConfig
    # the head's state (extractor, w, the secret b, the ledger) and the user samples' features
    private_artifacts: ClassVar[tuple[str, ...]] = ("state", "features")
    # an uploaded checkpoint is only the extractor: the runner then trains the head as ``train`` does
    checkpoint_trains_head: ClassVar[bool] = True

    # -- the runner's interface ---------------------------------------------------------------
    def build(self, spec: ModelSpec, cfg: CertifiedRemovalConfig) -> LinearHeadModel:
        return LinearHeadModel.build(spec.architecture, spec.architecture_config, cfg.seed)

    def prepare(self, model: LinearHeadModel, core: TensorSource, cfg: CertifiedRemovalConfig, progress: Progress = None) -> dict:
        """The extractor: cross-entropy on the core split only (with a temporary last layer), never
        on user data. Without core samples or with ``core_epochs=0`` the architecture's seeded
        initial weights are the (public) extractor."""
        if len(core) == 0 or cfg.core_epochs == 0:
            return {"epochs": 0, "seconds": 0.0}
        _check(model, core, "core")
        torch.manual_seed(cfg.seed)
        last = _split(build_network(model.architecture, model.architecture_config))[1].to(torch.float64)
        device = resolve_device(cfg.device)
        net = nn.Sequential(model.extractor, last).to(device).train()
        out = train_cross_entropy(net, core, epochs=cfg.core_epochs, lr=cfg.core_lr, batch_size=cfg.core_batch_size,
                                  seed=cfg.seed, device=device, dtype=torch.float64, progress=progress)
        model.extractor = model.extractor.cpu().eval()  # features and the head's math: float64 on CPU
        model.head, model.ids, model.x, model.y = None, None, None, None  # features changed
        return out

    def train(self, model: LinearHeadModel, user: TensorSource, cfg: CertifiedRemovalConfig, progress: Progress = None) -> CertifiedResult:
        """The head from scratch with a fresh b; the user features are computed here, once."""
        _check(model, user, "training")
        order = torch.argsort(user.ids) if user.ids is not None else torch.arange(len(user))
        model.ids = user.ids[order].to(torch.int64) if user.ids is not None else None
        model.x, model.y = model.features(user)[order], user.y[order].clone()
        return self._fit(model, model.x, model.y, cfg, "fit", "", retrains=0, progress=progress)

    def _fit(self, model, x, y, cfg, operation, reason, retrains, progress) -> CertifiedResult:
        model.head, info = H.train_head(x, H.one_vs_rest(y, model.num_classes), cfg.noise_std, cfg.l2, cfg.loss,
                                        cfg.max_newton_steps, retrains=retrains)
        if _budget(cfg).exceeded(model.head.beta):
            raise InvalidDataError(f"the training residual alone spends ε = {_budget(cfg).spent(model.head.beta):.3g} > {cfg.epsilon}")
        if progress is not None:
            progress({"phase": "solve", "iteration": info.iterations, "residual": info.residual})
        return self._result(model, operation, reason, info.iterations, info.residual, info.seconds)

    @staticmethod
    def _result(model, operation, reason, iterations, step, seconds) -> CertifiedResult:
        h = model.head
        return CertifiedResult(beta=h.beta, beta_step=step, removals_since_retrain=h.removals, retrains=h.retrains, retrain_reason=reason,
                               iterations=iterations, residual_norm=h.beta, converged=True, seconds=seconds,
                               newton_steps=iterations, n_samples=h.n, operation=operation, path="linear_head")

    def forget(self, model: LinearHeadModel, retained: TensorSource, cfg: CertifiedRemovalConfig, progress: Progress = None,
               removed: TensorSource | None = None) -> CertifiedResult:
        """Forget everything not in ``retained``: one Newton step on D_r (the kept features,
        matched by id), or a retrain with a fresh b when the budget would be crossed ("budget
        exhausted"), D_r holds samples the head never saw ("new samples": a removal cannot add) or
        the head was zeroed ("after zero")."""
        if model.head is None:
            raise InvalidDataError("the head is not trained: train first")
        _check(model, retained, "retained")
        (keep, x, y), new = self._retained(model, retained)
        if new or model.head.n == 0:  # a removal cannot add samples, nor start from a zeroed head
            model.ids, model.x, model.y = keep, x, y
            reason = "new samples" if new else "after zero"
            return self._fit(model, model.x, model.y, cfg, "retrain", reason, model.head.retrains + 1, progress)
        if len(x) == model.head.n and keep is not None and model.ids is not None and bool(torch.equal(keep, model.ids)):
            return self._result(model, "forget", "", 0, 0.0, 0.0)  # nothing removed: the same release
        start = time.perf_counter()
        head, step, reason = H.remove_or_retrain(model.head, x, H.one_vs_rest(y, model.num_classes), _budget(cfg), cfg.max_newton_steps)
        model.head, model.ids, model.x, model.y = head, keep, x, y
        if progress is not None:
            progress({"phase": "solve", "iteration": 1, "residual": head.beta})
        if reason:
            return self._result(model, "retrain", reason, step.iterations, step.residual, time.perf_counter() - start)
        return self._result(model, "forget", "", 1, step.bound, time.perf_counter() - start)

    @staticmethod
    def _retained(model: LinearHeadModel, retained: TensorSource):
        """((ids, x, y) of D_r, sorted by id; whether D_r has samples outside the fitted set).
        Without ids, the features of D_r are computed again (same extractor: the same values)."""
        if retained.ids is None or model.ids is None:
            x = model.features(retained)
            return (retained.ids, x, retained.y.clone()), model.ids is not None
        ids = torch.sort(retained.ids.to(torch.int64)).values
        if ids.numel() > 1 and bool((ids[1:] == ids[:-1]).any()):
            raise InvalidDataError("the retained samples repeat an id")
        known = torch.isin(ids, model.ids)
        if bool(known.all()):
            pos = torch.searchsorted(model.ids, ids)
            return (ids, model.x[pos], model.y[pos]), False
        order = torch.argsort(retained.ids)
        return (ids, model.features(retained)[order], retained.y[order].clone()), True

    def supports(self, operation: str) -> bool:
        return operation in ("zero", "retrain", "import_checkpoint")

    def import_checkpoint(self, spec: ModelSpec, data: bytes, cfg: CertifiedRemovalConfig) -> LinearHeadModel:
        """The extractor from an uploaded ``state_dict`` of the whole architecture (public or
        pretrained weights), checked like a ``standard`` checkpoint (names, shapes, dtypes, finite
        values). The uploaded last layer is checked but ignored: the head is Lethe's, trained on
        the user features with a fresh secret b (the runner calls :meth:`train` next)."""
        try:
            tensors = st_load(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure of untrusted bytes is bad input
            raise InvalidDataError(f"not a safetensors file: {exc}") from None
        torch.manual_seed(cfg.seed)
        net = build_network(spec.architecture, spec.architecture_config)
        extractor, last = _split(net)
        require_state_dict(net, tensors)
        want = net.state_dict()
        net.load_state_dict({k: v.to(want[k].dtype) for k, v in tensors.items()})
        return LinearHeadModel(spec.architecture, spec.architecture_config, extractor, last.out_features)

    def zero(self, model: LinearHeadModel) -> SolveResult:
        """w := 0: the head holds nothing of any user (β 0; the next train draws a fresh b)."""
        if model.head is not None:
            model.head = H.HeadState(torch.zeros_like(model.head.w), model.head.b, model.head.loss, model.head.lam, 0, 0.0, 0.0, 0,
                                     model.head.retrains)
        return SolveResult(iterations=0, residual_norm=0.0, converged=True, seconds=0.0, operation="zero")

    def retrain(self, model: LinearHeadModel, retained: TensorSource, cfg: CertifiedRemovalConfig,
                core_source: TensorSource | None = None, progress: Progress = None) -> CertifiedResult:
        """The head from scratch on D_r with a fresh b; with ``core_source`` the extractor first
        (from the architecture's seeded initial weights)."""
        if core_source is not None:
            fresh = LinearHeadModel.build(model.architecture, model.architecture_config, cfg.seed)
            model.extractor = fresh.extractor
            self.prepare(model, core_source, cfg, progress)
        res = self.train(model, retained, cfg, progress)
        res.operation = "retrain"
        return res

    def refine(self, cfg: CertifiedRemovalConfig) -> None:
        return None  # the certificate is what it is; the fallback is zero + retrain

    # -- the certificate -------------------------------------------------------------------------
    def bound(self, result: SolveResult, cfg: CertifiedRemovalConfig, *, exact: bool | None = None, method: str | None = None) -> Bound:
        """(ε_spent, δ) of the release, the budget and what is left. A retrain or zero holds nothing
        of the removed data (guarantee ``exact``); its ε_spent is the fresh training residual's,
        from which the next removals count. KL is not the statement here: ``kl_nats`` is NaN."""
        budget = _budget(cfg)
        operation = getattr(result, "operation", "fit")
        if exact is None:
            exact = operation in ("zero", "retrain")
        beta = float(getattr(result, "beta", result.residual_norm))
        spent = budget.spent(beta)
        extra = {
            "epsilon_spent": spent, "delta": cfg.delta, "epsilon_budget": cfg.epsilon, "budget_left": cfg.epsilon - spent,
            "beta": beta, "beta_step": float(getattr(result, "beta_step", 0.0)), "c": budget.c, "loss": cfg.loss,
            "removals_since_retrain": int(getattr(result, "removals_since_retrain", 0)), "retrain_reason": getattr(result, "retrain_reason", ""),
            "statement": STATEMENT,
        }
        kl = 0.0 if exact else math.nan
        name = method or self.name
        return Bound(name, "exact" if exact else self.guarantee, beta, cfg.l2, cfg.noise_std, int(result.iterations), kl, kl, extra)

    def gate(self, bound: Bound, parent_eval: dict | None, new_eval: dict | None, cfg: CertifiedRemovalConfig) -> GateResult:
        reasons = []
        spent = bound.extra.get("epsilon_spent")
        if spent is None or not (float(spent) <= cfg.epsilon):
            reasons.append(f"epsilon_spent {spent} exceeds the budget {cfg.epsilon}")
        before, after = (parent_eval or {}).get("accuracy"), (new_eval or {}).get("accuracy")
        if before is not None and after is not None and before - after > cfg.max_accuracy_drop:
            reasons.append(f"eval accuracy dropped by {before - after:.4f} > max_accuracy_drop {cfg.max_accuracy_drop}")
        return GateResult(not reasons, reasons)

    # -- evaluation ------------------------------------------------------------------------------
    def _losses(self, model: LinearHeadModel, source: TensorSource, cfg) -> tuple[torch.Tensor, torch.Tensor]:
        scores = model.features(source) @ model.net().w.T
        value, _, _ = H.derivatives(scores, H.one_vs_rest(source.y, model.num_classes), cfg.loss)
        return value.sum(1), scores

    def evaluate(self, model: LinearHeadModel, source: TensorSource, cfg: CertifiedRemovalConfig) -> dict:
        if len(source) == 0:
            return {"accuracy": None, "loss": None, "n": 0}
        loss, scores = self._losses(model, source, cfg)
        return {"accuracy": float((scores.argmax(1) == source.y).double().mean()), "loss": float(loss.mean()), "n": len(source)}

    def membership_auc(self, model: LinearHeadModel, forget: TensorSource, eval_: TensorSource, cfg: CertifiedRemovalConfig) -> float:
        return auc(-self._losses(model, forget, cfg)[0], -self._losses(model, eval_, cfg)[0])

    # -- files -------------------------------------------------------------------------------------
    def release(self, model: LinearHeadModel, cfg: CertifiedRemovalConfig) -> torch.Tensor:
        """w itself: the noise of this method is the secret b inside the objective, not on the output."""
        if model.head is None:
            raise InvalidDataError("the head is not trained")
        return model.head.w.clone()

    def serve_bytes(self, model: LinearHeadModel, released: torch.Tensor | None, metadata: dict[str, Any]) -> bytes:
        w = released if released is not None else model.net().w
        tensors = {f"extractor.{k}": v.contiguous() for k, v in model.extractor.state_dict().items()}
        tensors["head.w"] = w.to(torch.float64).contiguous()
        return st_save(tensors, metadata={**{k: str(v) for k, v in metadata.items()}, **self._meta(model)})

    @staticmethod
    def _meta(model: LinearHeadModel) -> dict[str, str]:
        return {"format": FORMAT, "architecture": model.architecture,
                "architecture_config": json.dumps(model.architecture_config, sort_keys=True), "num_classes": str(model.num_classes)}

    def save_private(self, model: LinearHeadModel) -> dict[str, bytes]:
        if model.head is None:
            raise InvalidDataError("the head is not trained")
        h = model.head
        tensors = {f"extractor.{k}": v.contiguous() for k, v in model.extractor.state_dict().items()}
        tensors.update({"head.w": h.w.contiguous(), "head.b": h.b.contiguous()})
        ledger = {"loss": h.loss, "lam": h.lam, "n": h.n, "beta": h.beta, "train_residual": h.train_residual,
                  "removals": h.removals, "retrains": h.retrains}
        meta = {**self._meta(model), "ledger": json.dumps(ledger), "private": "w, the secret b and the ledger; never served"}
        out = {"state": st_save(tensors, metadata=meta)}
        if model.x is not None:
            feats = {"x": model.x.contiguous(), "y": model.y.to(torch.int64).contiguous()}
            if model.ids is not None:
                feats["ids"] = model.ids.contiguous()
            out["features"] = st_save(feats, metadata={"private": "user samples' features; never served"})
        return out

    def load_private(self, blobs: dict[str, bytes], cfg: CertifiedRemovalConfig) -> LinearHeadModel:
        model, tensors, meta = load_linear_head(blobs["state"], private=True)
        ledger = json.loads(meta["ledger"])
        model.head = H.HeadState(tensors["head.w"], tensors["head.b"], ledger["loss"], float(ledger["lam"]), int(ledger["n"]),
                                 float(ledger["beta"]), float(ledger["train_residual"]), int(ledger["removals"]), int(ledger["retrains"]))
        if "features" in blobs:
            f = st_load(blobs["features"])
            model.x, model.y, model.ids = f["x"], f["y"], f.get("ids")
        return model


def load_linear_head(data: bytes, *, private: bool = False, architectures: Mapping[str, Builder] | None = None):
    """The served :class:`LinearHeadNet` from a file's bytes (architecture from the registry, or
    ``architectures``, only); ``private=True``: (model object, tensors, metadata) for
    :meth:`CertifiedRemoval.load_private`."""
    meta = read_metadata(data)
    if meta.get("format") != FORMAT:
        raise ConfigError(f"not a Lethe linear-head file (format={meta.get('format')!r})")
    arch = meta.get("architecture")
    try:
        builder = resolve_architecture(arch, architectures)  # refuses unknown names before building anything
    except ConfigError as exc:
        raise ConfigError(f"refusing to load this file: {exc}") from None
    cfg = json.loads(meta["architecture_config"])
    if not isinstance(cfg, dict):
        raise ConfigError("the file's architecture_config is not a JSON object")
    model = LinearHeadModel.build(arch, cfg, architectures={arch: builder})
    tensors = st_load(data)
    model.extractor.load_state_dict({k[len("extractor."):]: v for k, v in tensors.items() if k.startswith("extractor.")})
    if private:
        return model, tensors, meta
    return model.net(tensors["head.w"])
