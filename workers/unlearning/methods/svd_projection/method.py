"""``svd_projection``: forgetting whole classes of a ``standard`` network without retraining
(Kodge, Saha, Roy, TMLR 2024; DESIGN §14.3). The math is in :mod:`.projection`.

The model object is :class:`ClassifierState`: the unmasked network and the classes it was made to
forget. Everything measured (evaluation, gates, MIA) uses the unmasked network, since the mask
would make the gates pass by construction; only the served file masks the forgotten classes
(``serialization.MaskedClassifier``: logits −inf).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from workers.unlearning.bounds import Bound, exact_bound
from workers.unlearning.data import TensorSource
from workers.unlearning.errors import InvalidDataError
from workers.unlearning.evaluation import auc
from workers.unlearning.gates import GateResult
from workers.unlearning.linearized import resolve_device
from workers.unlearning.methods.base import ModelSpec
from workers.unlearning.methods.svd_projection.config import SvdProjectionConfig
from workers.unlearning.methods.svd_projection.projection import Representations, grid_search, per_class_sample
from workers.unlearning.networks import build_network
from workers.unlearning.objective import Progress, SolveResult
from workers.unlearning.serialization import read_standard, standard_to_bytes


@dataclass
class ClassifierState:
    """A standard classifier and the classes it no longer knows (masked when served)."""

    network: nn.Module
    architecture: str
    architecture_config: dict[str, Any]
    forgotten: list[int] = field(default_factory=list)
    last_projection: dict[str, Any] = field(default_factory=dict)  # α used, grid figures, layer moves

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device


def _logits(state: ClassifierState, source: TensorSource) -> list[tuple[torch.Tensor, torch.Tensor]]:
    net = state.network
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            return [(net(x.to(state.device)).to(torch.float64).cpu(), y) for x, y in source]
    finally:
        net.train(was_training)


def _per_sample_loss(state: ClassifierState, source: TensorSource) -> torch.Tensor:
    parts = [F.cross_entropy(out, y, reduction="none") for out, y in _logits(state, source)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


class SvdProjection:
    name: ClassVar[str] = "svd_projection"
    guarantee: ClassVar[str] = "heuristic"
    families: ClassVar[frozenset[str]] = frozenset({"standard"})
    kinds: ClassVar[frozenset[str]] = frozenset({"class"})
    config_cls: ClassVar[type[SvdProjectionConfig]] = SvdProjectionConfig
    # the unmasked network and its forgotten classes: the start of the next job, never served
    private_artifacts: ClassVar[tuple[str, ...]] = ("weights",)

    # -- building and ordinary training -----------------------------------------------------------
    def build(self, spec: ModelSpec, cfg: SvdProjectionConfig) -> ClassifierState:
        torch.manual_seed(cfg.seed)
        net = build_network(spec.architecture, spec.architecture_config).to(resolve_device(cfg.device))
        return ClassifierState(net, spec.architecture, dict(spec.architecture_config))

    def prepare(self, model: ClassifierState, core: TensorSource, cfg: SvdProjectionConfig, progress: Progress = None) -> dict:
        """A standard network has no separate core stage: everything is trained by :meth:`train`."""
        return {"epochs": 0, "seconds": 0.0}

    def train(self, model: ClassifierState, user: TensorSource, cfg: SvdProjectionConfig, progress: Progress = None) -> SolveResult:
        """Cross-entropy with Adam, ``cfg.epochs`` passes (seeded)."""
        if len(user) == 0:
            raise InvalidDataError("the training set is empty")
        net, device = model.network, model.device
        gen = torch.Generator().manual_seed(cfg.seed)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        start = time.perf_counter()
        net.train()
        for epoch in range(cfg.epochs):
            perm = torch.randperm(len(user), generator=gen)
            total = 0.0
            for i in range(0, len(user), cfg.train_batch_size):
                idx = perm[i : i + cfg.train_batch_size]
                if len(idx) < 2:
                    continue  # a batch of one breaks BatchNorm
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(net(user.x[idx].to(device)), user.y[idx].to(device))
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            if progress is not None:
                progress({"phase": "train", "epoch": epoch + 1, "loss": total / len(user)})
        net.eval()
        return SolveResult(iterations=cfg.epochs, residual_norm=math.nan, converged=True,
                           seconds=time.perf_counter() - start, n_samples=len(user), operation="fit", path="adam")

    def retrain(self, model: ClassifierState, user: TensorSource, cfg: SvdProjectionConfig, core_source: TensorSource | None = None,
                progress: Progress = None) -> SolveResult:
        """From a fresh initialisation on ``user`` alone (the forgotten classes stay masked)."""
        torch.manual_seed(cfg.seed)
        model.network = build_network(model.architecture, model.architecture_config).to(model.device)
        result = self.train(model, user, cfg, progress)
        result.operation = "retrain"
        return result

    def supports(self, operation: str) -> bool:
        return operation == "retrain"

    # -- forgetting ---------------------------------------------------------------------------
    def forget(self, model: ClassifierState, retained: TensorSource, cfg: SvdProjectionConfig, progress: Progress = None,
               removed: TensorSource | None = None) -> SolveResult:
        """Forget the classes of ``removed`` that ``retained`` no longer holds: project every
        Linear/Conv2d layer from a retain sample (``retain_per_class`` per kept class) and a forget
        sample, then re-estimate BatchNorm on the retain sample. Whole classes only."""
        classes = self.forgotten_classes(model, retained, removed)
        start = time.perf_counter()
        device = model.device
        r_idx = per_class_sample(retained.y, cfg.retain_per_class, cfg.seed)
        f_idx = per_class_sample(removed.y, cfg.forget_per_class, cfg.seed + 1)
        retain_x, retain_y = retained.x[r_idx], retained.y[r_idx]
        forget_x, forget_y = removed.x[f_idx], removed.y[f_idx]
        if progress is not None:
            progress({"phase": "representations", "retain": len(r_idx), "forget": len(f_idx)})
        reps = Representations.collect(model.network, retain_x, forget_x, max_patches=cfg.max_patches,
                                       batch_size=cfg.batch_size, device=device, seed=cfg.seed)
        alpha_r, alpha_f, table = cfg.alpha_r, cfg.alpha_f, []
        if cfg.grid_search:
            alpha_r, alpha_f, table = grid_search(model.network, reps, (retain_x, retain_y), (forget_x, forget_y),
                                                  cfg.alpha_r_grid, cfg.alpha_f_grid, max_forget_accuracy=cfg.max_forget_accuracy,
                                                  batch_size=cfg.batch_size, device=device)
        moved = reps.apply(model.network, retain_x, alpha_r, alpha_f, batch_size=cfg.batch_size, device=device)
        model.forgotten = sorted(set(model.forgotten) | set(classes))
        model.last_projection = {"classes": classes, "alpha_r": alpha_r, "alpha_f": alpha_f, "grid": table, "moved": moved,
                                 "retain_n": len(r_idx), "forget_n": len(f_idx)}
        return SolveResult(iterations=max(len(table), 1), residual_norm=math.nan, converged=True,
                           seconds=time.perf_counter() - start, n_samples=len(r_idx) + len(f_idx), operation="forget",
                           path="svd-projection")

    @staticmethod
    def forgotten_classes(model: ClassifierState, retained: TensorSource, removed: TensorSource | None) -> list[int]:
        """The labels of ``removed`` absent from ``retained``; refused unless whole classes go and
        at least two classes remain."""
        if removed is None or len(removed) == 0:
            raise InvalidDataError("svd_projection forgets classes from their samples: none were given")
        gone = set(torch.unique(removed.y).tolist())
        kept = set(torch.unique(retained.y).tolist())
        partial = sorted(gone & kept)
        if partial:
            raise InvalidDataError(f"classes {partial} still have retained samples: svd_projection forgets whole classes only")
        num_classes = int(_logits(model, retained.subset(torch.arange(min(len(retained), 2))))[0][0].shape[1]) if len(retained) else 0
        left = num_classes - len(set(model.forgotten) | gone)
        if len(kept) < 2 or left < 2:
            raise InvalidDataError(f"forgetting classes {sorted(gone)} would leave {min(left, len(kept))} class(es); at least two must remain")
        return sorted(gone)

    def bound(self, result: SolveResult, cfg: SvdProjectionConfig, *, exact: bool | None = None, method: str | None = None) -> Bound:
        if exact or result.operation == "retrain":
            return exact_bound(method or "retrain", math.nan, 0.0, result.iterations)
        return Bound(self.name, "heuristic", math.nan, math.nan, 0.0, result.iterations, math.inf, math.inf)

    def refine(self, cfg: SvdProjectionConfig) -> None:
        """No tighter setting to rerun from the projected state (the grid search is a config
        choice made before the projection); a failed gate falls back to a retrain."""
        return None

    def gate(self, bound: Bound, parent_eval: dict | None, new_eval: dict | None, cfg: SvdProjectionConfig) -> GateResult:
        """On the unmasked network: forget-class accuracy ≤ ``max_forget_accuracy``; retained
        accuracy drop ≤ ``max_accuracy_drop``; |class MIA AUC − 0.5| ≤ ``max_mia_deviation``
        where it was measured (held-out samples of the forgotten classes exist)."""
        new, parent = new_eval or {}, parent_eval or {}
        reasons = []
        forget_acc = new.get("forget_accuracy")
        if forget_acc is None or not forget_acc <= cfg.max_forget_accuracy:
            reasons.append(f"forget-class accuracy {forget_acc} exceeds {cfg.max_forget_accuracy}")
        before, after = parent.get("accuracy"), new.get("accuracy")
        if before is not None and after is not None:
            drop = float(before) - float(after)
            if not drop <= cfg.max_accuracy_drop:
                reasons.append(f"retained accuracy dropped by {drop:.4f} > {cfg.max_accuracy_drop}")
        mia = new.get("mia_auc")
        if mia is not None and not (isinstance(mia, float) and math.isnan(mia)) and not abs(float(mia) - 0.5) <= cfg.max_mia_deviation:
            reasons.append(f"class MIA AUC {float(mia):.3f} is more than {cfg.max_mia_deviation} from 0.5")
        return GateResult(ok=not reasons, reasons=reasons)

    # -- measuring ----------------------------------------------------------------------------
    def evaluate(self, model: ClassifierState, source: TensorSource, cfg: SvdProjectionConfig) -> dict:
        """Accuracy and mean cross-entropy of the UNMASKED network on ``source``."""
        if len(source) == 0:
            return {"accuracy": None, "loss": None, "n": 0}
        pairs = _logits(model, source)
        correct = sum(int((out.argmax(dim=1) == y).sum()) for out, y in pairs)
        loss = torch.cat([F.cross_entropy(out, y, reduction="none") for out, y in pairs]).mean()
        return {"accuracy": correct / len(source), "loss": float(loss), "n": len(source)}

    def membership_auc(self, model: ClassifierState, forget: TensorSource, eval_: TensorSource, cfg: SvdProjectionConfig) -> float:
        """Class MIA: the forgotten classes' training samples against held-out samples of the
        SAME classes (a lower loss says "member"); 0.5 means the network no longer tells them
        apart. NaN when ``eval_`` holds no sample of those classes."""
        held_out = torch.isin(eval_.y, torch.unique(forget.y)).nonzero().reshape(-1)
        if len(forget) == 0 or held_out.numel() == 0:
            return math.nan
        return auc(-_per_sample_loss(model, forget), -_per_sample_loss(model, eval_.subset(held_out)))

    # -- files --------------------------------------------------------------------------------
    def release(self, model: ClassifierState, cfg: SvdProjectionConfig) -> None:
        return None  # no release noise: the heuristic guarantee rests on the measured gates

    def serve_bytes(self, model: ClassifierState, released: Any | None, metadata: dict[str, Any]) -> bytes:
        return standard_to_bytes(model.network, model.architecture, model.architecture_config, model.forgotten, metadata)

    def save_private(self, model: ClassifierState) -> dict[str, bytes]:
        meta = {"private": "unmasked; never served", "last_projection": {k: v for k, v in model.last_projection.items() if k != "grid"}}
        return {"weights": standard_to_bytes(model.network, model.architecture, model.architecture_config, model.forgotten, meta)}

    def load_private(self, blobs: dict[str, bytes], cfg: SvdProjectionConfig) -> ClassifierState:
        net, masked, meta = read_standard(blobs["weights"], resolve_device(cfg.device))
        return ClassifierState(net, meta["architecture"], json.loads(meta["architecture_config"]), masked)
