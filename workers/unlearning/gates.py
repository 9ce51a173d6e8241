"""Gates before publishing (DESIGN §6.6)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from workers.unlearning.bounds import Bound


@dataclass
class GateResult:
    ok: bool
    reasons: list[str] = field(default_factory=list)


def check_gates(bound: Bound, parent_eval: dict | None, new_eval: dict | None, config) -> GateResult:
    reasons = []
    max_kl = float(config.max_kl_per_release)
    if not (bound.kl_nats <= max_kl):
        reasons.append(f"kl_nats {bound.kl_nats:.3g} exceeds max_kl_per_release {max_kl:.3g}")
    if parent_eval and new_eval and parent_eval.get("accuracy") is not None and new_eval.get("accuracy") is not None:
        drop = parent_eval["accuracy"] - new_eval["accuracy"]
        if drop > float(config.max_accuracy_drop) or math.isnan(drop):
            reasons.append(f"eval accuracy dropped by {drop:.4f} > max_accuracy_drop {config.max_accuracy_drop}")
    return GateResult(ok=not reasons, reasons=reasons)


# ----------------------------------------------------------------------------- measured gates
# For heuristic methods (DESIGN §6.6–6.7, §6.8): no bound to check, so the release is judged on
# what it does. ``parent_eval`` / ``new_eval`` are the runner's metrics (``eval_accuracy``,
# ``retain_accuracy``, ``forget_accuracy``, ``forget_n``, ``mia_auc``, ``eval_n``).
def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval for a proportion (sound at small n, unlike the Wald interval)."""
    if n <= 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def auc_interval(a: float, n_pos: int, n_neg: int, confidence: float) -> tuple[float, float]:
    """Hanley–McNeil (1982) normal interval for a Mann–Whitney AUC."""
    if n_pos <= 0 or n_neg <= 0 or not math.isfinite(a):
        return 0.0, 1.0
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    half = _z(confidence) * math.sqrt(max(var, 0.0))
    return max(0.0, a - half), min(1.0, a + half)


@dataclass
class MeasuredGate(GateResult):
    measured: dict = field(default_factory=dict)  # what the gates judged (intervals when pooled)


def check_measured_gates(parent_eval: dict | None, new_eval: dict | None, config) -> MeasuredGate:
    """Eval accuracy and retained accuracy against the parent; forget-set accuracy against eval
    accuracy (the forgotten samples should look unseen, not score 0); the loss-threshold MIA AUC
    near 0.5. With fewer forgotten samples than ``config.min_forget_samples`` (the job's whole
    batch is already pooled) a point estimate says little: the gates judge a ``confidence``
    interval instead, and pass when it reaches the allowed band (the data cannot show a failure)."""
    new, parent = new_eval or {}, parent_eval or {}
    reasons: list[str] = []
    measured: dict = {}
    ev = new.get("eval_accuracy")
    if ev is None:
        return MeasuredGate(ok=False, reasons=["no eval split: a heuristic release cannot be measured, so it is not published"])
    for key, limit, label in (("eval_accuracy", config.max_accuracy_drop, "eval"), ("retain_accuracy", config.max_retain_drop, "retained")):
        before, after = parent.get(key), new.get(key)
        if before is not None and after is not None and not (before - after <= limit):
            reasons.append(f"{label} accuracy dropped by {before - after:.4f} > {limit}")
    fa, n = new.get("forget_accuracy"), int(new.get("forget_n") or 0)
    if fa is not None and n:
        pooled = n < config.min_forget_samples
        lo, hi = wilson_interval(round(fa * n), n, config.confidence) if pooled else (fa, fa)
        measured["forget_accuracy_interval"] = [lo, hi] if pooled else None
        if hi < ev - config.max_forget_gap or lo > ev + config.max_forget_gap:
            shown = f"[{lo:.3f}, {hi:.3f}] ({config.confidence:.0%}, n={n})" if pooled else f"{fa:.4f}"
            reasons.append(f"forget-set accuracy {shown} is more than {config.max_forget_gap} from eval accuracy {ev:.4f}")
        a = new.get("mia_auc")
        if a is not None and math.isfinite(a):
            lo, hi = auc_interval(a, n, int(new.get("eval_n") or 0), config.confidence) if pooled else (a, a)
            measured["mia_auc_interval"] = [lo, hi] if pooled else None
            if hi < 0.5 - config.max_mia_gap or lo > 0.5 + config.max_mia_gap:
                shown = f"[{lo:.3f}, {hi:.3f}] ({config.confidence:.0%}, n={n})" if pooled else f"{a:.4f}"
                reasons.append(f"MIA AUC {shown} is more than {config.max_mia_gap} from 0.5")
        elif a is None or not math.isfinite(a):
            reasons.append("MIA AUC could not be measured")
    return MeasuredGate(ok=not reasons, reasons=reasons, measured=measured)
