"""``svd_projection``: forgetting whole classes of a ``standard`` network without retraining
(Kodge, Saha, Roy, TMLR 2024; DESIGN §14.3). The math is in :mod:`.projection`.

The model object is the family's :class:`~workers.unlearning.standard.StandardModel`; the classes
it was made to forget are its ``masked_classes``. Everything measured (evaluation, gates, MIA) uses
the unmasked network, since the mask would make the gates pass by construction; only the served
file masks them (``standard.MaskedClassifier``: logits −inf). Training and the ``retrain``
fallback are the family's recipe (:func:`workers.unlearning.standard.train`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from workers.unlearning import standard
from workers.unlearning.bounds import Bound, exact_bound
from workers.unlearning.data import TensorSource
from workers.unlearning.errors import InvalidDataError
from workers.unlearning.gates import MeasuredGate, check_measured_gates, wilson_interval
from workers.unlearning.methods.base import ModelSpec
from workers.unlearning.methods.svd_projection.config import SvdProjectionConfig
from workers.unlearning.methods.svd_projection.projection import Representations, grid_search, per_class_sample
from workers.unlearning.objective import Progress, SolveResult
from workers.unlearning.standard import StandardModel


@dataclass
class ProjectionResult(SolveResult):
    """A train, projection or retrain; ``to_dict`` goes into the job's checkpoint."""

    masked_classes: list[int] = field(default_factory=list)  # after this step
    classes: list[int] = field(default_factory=list)  # forgotten by this projection
    alpha_r: float = math.nan
    alpha_f: float = math.nan
    grid: list[dict] = field(default_factory=list)  # (α_r, α_f, retain / forget sample accuracy) tried
    moved: dict[str, float] = field(default_factory=dict)  # relative weight change per layer


class SvdProjection:
    name: ClassVar[str] = "svd_projection"
    guarantee: ClassVar[str] = "heuristic"
    families: ClassVar[frozenset[str]] = frozenset({"standard"})
    kinds: ClassVar[frozenset[str]] = frozenset({"class"})
    config_cls: ClassVar[type[SvdProjectionConfig]] = SvdProjectionConfig
    # the unmasked network and its masked classes: the start of the next job, never served
    private_artifacts: ClassVar[tuple[str, ...]] = ("weights",)

    # -- building and ordinary training (the family's recipe) ----------------------------------
    def build(self, spec: ModelSpec, cfg: SvdProjectionConfig) -> StandardModel:
        return standard.build(spec.architecture, spec.architecture_config, cfg)

    def prepare(self, model: StandardModel, core: TensorSource, cfg: SvdProjectionConfig, progress: Progress = None) -> dict:
        standard.refuse_core(core)
        return {"seconds": 0.0}

    def train(self, model: StandardModel, user: TensorSource, cfg: SvdProjectionConfig, progress: Progress = None) -> ProjectionResult:
        out = standard.train(model, user, cfg, progress)
        model.masked_classes = []
        return ProjectionResult(iterations=cfg.epochs, residual_norm=math.nan, seconds=out["seconds"], n_samples=len(user),
                                operation="fit", path="recipe")

    def retrain(self, model: StandardModel, retained: TensorSource, cfg: SvdProjectionConfig, core_source: TensorSource | None = None,
                progress: Progress = None) -> ProjectionResult:
        """The recipe from a fresh initialisation (``cfg.seed``) on D_r. The classes D_r holds no
        sample of stay masked: the retrained network never saw them (the forgotten ones, and any
        class that never had a sample)."""
        if core_source is not None:
            self.prepare(model, core_source, cfg)
        num_classes = standard.check_data(model, retained, "retained")
        fresh = standard.build(model.architecture, model.architecture_config, cfg)
        model.network.load_state_dict(fresh.network.state_dict())
        result = self.train(model, retained, cfg, progress)
        model.masked_classes = sorted(set(range(num_classes)) - set(torch.unique(retained.y).tolist()))
        result.operation, result.masked_classes = "retrain", list(model.masked_classes)
        return result

    def supports(self, operation: str) -> bool:
        return operation in ("retrain", "import_checkpoint")  # no "zero" that keeps a standard network useful

    def import_checkpoint(self, spec: ModelSpec, data: bytes, cfg: SvdProjectionConfig) -> StandardModel:
        """An uploaded ``state_dict`` (safetensors), checked against the architecture; no class masked."""
        return standard.from_bytes(data, device=cfg.device, architecture=spec.architecture, architecture_config=spec.architecture_config)

    # -- forgetting ---------------------------------------------------------------------------
    def forget(self, model: StandardModel, retained: TensorSource, cfg: SvdProjectionConfig, progress: Progress = None,
               removed: TensorSource | None = None) -> ProjectionResult:
        """Forget the classes of ``removed`` that ``retained`` no longer holds: project every
        Linear/Conv2d layer from a retain sample (``retain_per_class`` per kept class) and a forget
        sample, then re-estimate BatchNorm on the retain sample. Whole classes only."""
        classes = self.forgotten_classes(model, retained, removed)
        start = time.perf_counter()
        device, bs = model.device_, cfg.projection_batch_size
        r_idx = per_class_sample(retained.y, cfg.retain_per_class, cfg.seed)
        f_idx = per_class_sample(removed.y, cfg.forget_per_class, cfg.seed + 1)
        retain_x, retain_y = retained.x[r_idx], retained.y[r_idx]
        forget_x, forget_y = removed.x[f_idx], removed.y[f_idx]
        if progress is not None:
            progress({"phase": "representations", "retain": len(r_idx), "forget": len(f_idx)})
        reps = Representations.collect(model.network, retain_x, forget_x, max_patches=cfg.max_patches,
                                       batch_size=bs, device=device, seed=cfg.seed)
        alpha_r, alpha_f, table = cfg.alpha_r, cfg.alpha_f, []
        if cfg.grid_search:
            alpha_r, alpha_f, table = grid_search(model.network, reps, (retain_x, retain_y), (forget_x, forget_y),
                                                  cfg.alpha_r_grid, cfg.alpha_f_grid, max_forget_accuracy=cfg.max_forget_accuracy,
                                                  batch_size=bs, device=device)
        moved = reps.apply(model.network, retain_x, alpha_r, alpha_f, batch_size=bs, device=device)
        model.masked_classes = sorted(set(model.masked_classes) | set(classes))
        return ProjectionResult(iterations=max(len(table), 1), residual_norm=math.nan, seconds=time.perf_counter() - start,
                                n_samples=len(r_idx) + len(f_idx), operation="forget", path="svd-projection",
                                masked_classes=list(model.masked_classes), classes=classes, alpha_r=alpha_r, alpha_f=alpha_f,
                                grid=table, moved=moved)

    @staticmethod
    def forgotten_classes(model: StandardModel, retained: TensorSource, removed: TensorSource | None) -> list[int]:
        """The labels of ``removed`` absent from ``retained``; refused unless whole classes go and
        at least two classes remain."""
        if removed is None or len(removed) == 0:
            raise InvalidDataError("svd_projection forgets classes from their samples: none were given")
        num_classes = standard.check_data(model, removed, "forgotten")
        if len(retained):
            standard.check_data(model, retained, "retained")
        gone = set(torch.unique(removed.y).tolist())
        kept = set(torch.unique(retained.y).tolist())
        partial = sorted(gone & kept)
        if partial:
            raise InvalidDataError(f"classes {partial} still have retained samples: svd_projection forgets whole classes only")
        left = num_classes - len(set(model.masked_classes) | gone)
        if len(kept) < 2 or left < 2:
            raise InvalidDataError(f"forgetting classes {sorted(gone)} would leave {min(left, len(kept))} class(es); at least two must remain")
        return sorted(gone)

    def bound(self, result: ProjectionResult, cfg: SvdProjectionConfig, *, exact: bool | None = None, method: str | None = None) -> Bound:
        """``retrain``: exact. A projection: ``heuristic`` (no finite information bound); both
        record the masked classes, a projection its α pair."""
        masked = {"masked_classes": list(getattr(result, "masked_classes", []))}
        if exact or (exact is None and result.operation == "retrain"):
            return replace(exact_bound(method or "retrain", math.nan, 0.0, result.iterations), extra=masked)
        return Bound(self.name, "heuristic", math.nan, math.nan, 0.0, result.iterations, math.inf, math.inf,
                     extra={**masked, "alpha_r": getattr(result, "alpha_r", math.nan), "alpha_f": getattr(result, "alpha_f", math.nan)})

    def refine(self, cfg: SvdProjectionConfig) -> None:
        """No tighter setting to rerun from the projected state (the grid search is a config
        choice made before the projection); a failed gate falls back to a retrain."""
        return None

    def gate(self, bound: Bound, parent_eval: dict | None, new_eval: dict | None, cfg: SvdProjectionConfig) -> MeasuredGate:
        """On the unmasked network: the family's eval / retained accuracy drops; forget-class
        accuracy ≤ ``max_forget_accuracy`` (a missing figure fails; below ``min_forget_samples``
        the lower end of its Wilson interval); |class MIA AUC − 0.5| ≤ ``max_mia_gap`` where it
        was measured (held-out samples of the forgotten classes exist)."""
        new = dict(new_eval or {})
        fa, mia = new.pop("forget_accuracy", None), new.pop("mia_auc", None)  # judged here, not as unseen samples
        result = check_measured_gates(parent_eval, new, cfg)
        n = int(new.get("forget_n") or 0)
        if fa is None:
            result.reasons.append("forget-class accuracy was not measured")
        else:
            pooled = 0 < n < cfg.min_forget_samples
            lo = wilson_interval(round(fa * n), n, cfg.confidence)[0] if pooled else fa
            if not lo <= cfg.max_forget_accuracy:
                result.reasons.append(f"forget-class accuracy {fa:.4f} (n={n}) exceeds {cfg.max_forget_accuracy}")
        if mia is not None and math.isfinite(mia) and not abs(mia - 0.5) <= cfg.max_mia_gap:
            result.reasons.append(f"class MIA AUC {mia:.3f} is more than {cfg.max_mia_gap} from 0.5")
        result.ok = not result.reasons
        return result

    # -- measuring ----------------------------------------------------------------------------
    def evaluate(self, model: StandardModel, source: TensorSource, cfg: SvdProjectionConfig) -> dict:
        """Accuracy and mean cross-entropy of the UNMASKED network."""
        return standard.evaluate(model, source)

    def membership_auc(self, model: StandardModel, forget: TensorSource, eval_: TensorSource, cfg: SvdProjectionConfig) -> float:
        """Class MIA: the forgotten classes' training samples against held-out samples of the
        SAME classes (the family's loss-threshold attack); 0.5 means the network no longer tells
        them apart. NaN when ``eval_`` holds no sample of those classes."""
        held_out = torch.isin(eval_.y, torch.unique(forget.y)).nonzero().reshape(-1)
        if len(forget) == 0 or held_out.numel() == 0:
            return math.nan
        return standard.membership_auc(model, forget, eval_.subset(held_out))

    # -- files --------------------------------------------------------------------------------
    def release(self, model: StandardModel, cfg: SvdProjectionConfig) -> None:
        return None  # no release noise: the heuristic guarantee rests on the measured gates

    def serve_bytes(self, model: StandardModel, released: Any | None, metadata: dict[str, Any]) -> bytes:
        return standard.to_bytes(model, metadata={**metadata, "method": self.name})

    def save_private(self, model: StandardModel) -> dict[str, bytes]:
        return {"weights": standard.to_bytes(model, metadata={"private": "unmasked; never served"})}

    def load_private(self, blobs: dict[str, bytes], cfg: SvdProjectionConfig) -> StandardModel:
        return standard.from_bytes(blobs["weights"], device=cfg.device)
