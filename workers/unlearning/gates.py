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
