"""``gradient_ascent`` against retraining from scratch (DESIGN §14.2, issue 13).

For each data set and network (``linear``, ``two_layer_relu``): train by full-batch gradient
descent with the dual coefficients, forget k samples by the scaled ascent steps, and retrain from
scratch on D_r in the same process (the baseline). Reported: time per forgotten sample against
the retrain, eval accuracy, forget-set accuracy, membership-inference AUC (forgotten vs eval)
before / after / retrained, the KKT figures on D_r before the step, after it and for the
retrained model, and the cosine of θ⁻ (and of θ) to the retrained weights.

Data sets: ``synthetic`` (y·μ + Gaussian noise in d ≫ n, nearly orthogonal points: the regime of
the theory) and ``digits-3v8`` (scikit-learn's 8x8 digits, 3 against 8, d = 64 < n: outside it).

    .venv/bin/python bench/gradient_ascent.py --quick     # about a minute on one core
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.unlearning import TensorSource, get_method  # noqa: E402
from workers.unlearning.methods.base import ModelSpec  # noqa: E402

OUT = ROOT / "bench" / "results"
METHOD = get_method("gradient_ascent")


def synthetic(n: int, d: int, seed: int = 0, signal: float = 4.0):
    """x = y·μ + ξ, ξ ~ N(0, I_d), ‖μ‖ = ``signal``: ‖x‖² ≈ d while |⟨x_i, x_j⟩| ≈ √d."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=d)
    mu *= signal / np.linalg.norm(mu)

    def draw(m):
        y = rng.integers(0, 2, size=m)
        return ((2 * y - 1)[:, None] * mu + rng.normal(size=(m, d))) / np.sqrt(d), y

    return draw(n), draw(200)


def digits_3v8(seed: int = 0):
    from sklearn.datasets import load_digits

    dg = load_digits()
    keep = np.isin(dg.target, (3, 8))
    x, y = dg.data[keep] / 16.0, (dg.target[keep] == 8).astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    return (x[perm[:cut]], y[perm[:cut]]), (x[perm[cut:]], y[perm[cut:]])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / a.norm() / b.norm())


def case(name: str, arch: str, train, ev, k: int, cfg) -> dict:
    (x, y), (xe, ye) = train, ev
    n, d = x.shape
    ids = np.arange(n)
    conf = {"in_features": d} if arch == "linear" else {"in_features": d, "hidden": 64}
    src, evs = TensorSource(x, y, ids=ids), TensorSource(xe, ye)
    model = METHOD.build(ModelSpec(arch, conf), cfg)
    t = time.perf_counter()
    fit = METHOD.train(model, src, cfg)
    train_s = time.perf_counter() - t
    gone = np.sort(np.random.default_rng(1).choice(n, size=k, replace=False))  # forget steps go by id
    keep = np.setdiff1d(ids, gone)
    retained, removed = src.subset(keep), src.subset(gone)
    theta = model.theta().clone()
    # the step alone (forget also computes the KKT figures on D_r, two passes over it, for the log)
    # (the fastest of 5 runs on fresh copies: sub-millisecond times on a shared machine are noisy)
    blobs, step_s = METHOD.save_private(model), float("inf")
    for _ in range(5):
        copy = METHOD.load_private(blobs, cfg)
        lam, _ = METHOD.duals_of(copy, torch.as_tensor(gone))
        t = time.perf_counter()
        METHOD.step(copy, removed.x, removed.y, lam)
        step_s = min(step_s, time.perf_counter() - t)
    before = {"eval_accuracy": METHOD.evaluate(model, evs, cfg)["accuracy"],
              "forget_accuracy": METHOD.evaluate(model, removed, cfg)["accuracy"],
              "mia_auc": METHOD.membership_auc(model, removed, evs, cfg)}
    t = time.perf_counter()
    res = METHOD.forget(model, retained, cfg, removed=removed)
    forget_s = time.perf_counter() - t
    after = {"eval_accuracy": METHOD.evaluate(model, evs, cfg)["accuracy"],
             "forget_accuracy": METHOD.evaluate(model, removed, cfg)["accuracy"],
             "mia_auc": METHOD.membership_auc(model, removed, evs, cfg)}
    oracle = METHOD.build(ModelSpec(arch, conf), cfg)
    t = time.perf_counter()
    rt = METHOD.retrain(oracle, retained, cfg)
    retrain_s = time.perf_counter() - t
    retrained = {"eval_accuracy": METHOD.evaluate(oracle, evs, cfg)["accuracy"],
                 "forget_accuracy": METHOD.evaluate(oracle, removed, cfg)["accuracy"],
                 "mia_auc": METHOD.membership_auc(oracle, removed, evs, cfg)}
    return {
        "dataset": name, "architecture": arch, "n": n, "d": d, "forgotten": k, "epochs": cfg.epochs, "lr": cfg.lr,
        "train_s": train_s, "forget_s": forget_s, "forget_s_per_sample": forget_s / k, "step_s_per_sample": step_s / k,
        "retrain_s": retrain_s, "speedup_vs_retrain": retrain_s / forget_s, "step_speedup_vs_retrain": retrain_s / step_s,
        "step_equals_forget": bool(torch.allclose(copy.theta(), model.theta(), rtol=1e-12, atol=1e-15)),
        "fit_kkt": fit.figures, "after_kkt": res.figures, "retrained_kkt": rt.figures,
        "before": before, "after": after, "retrained": retrained,
        "cos_after_to_retrained": cosine(model.theta(), oracle.theta()), "cos_before_to_retrained": cosine(theta, oracle.theta()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps and samples (about a minute)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # small tensors on a shared machine: one thread for both sides of every ratio
    steps = 1000 if args.quick else 5000
    sets = [("synthetic", *synthetic(n=50 if args.quick else 200, d=2000 if args.quick else 5000)), ("digits-3v8", *digits_3v8())]
    rows = []
    for name, train, ev in sets:
        for arch in ("linear", "two_layer_relu"):
            for k in (1, 5):
                cfg = METHOD.config_cls(epochs=steps, lr=2.0)
                rows.append(case(name, arch, train, ev, k, cfg))
                r = rows[-1]
                print(f"{name:11s} {arch:15s} k={k}: step {r['step_s_per_sample'] * 1e3:.2f} ms/sample, "
                      f"retrain {r['retrain_s']:.2f} s, ×{r['speedup_vs_retrain']:.0f}", flush=True)
    head = ("| data | network | n | d | k | step ms/sample | forget+figures ms/sample | retrain s | speed-up (step / forget+figures) | "
            "eval acc (orig / after / retrain) | "
            "forget acc (orig / after / retrain) | MIA AUC (orig / after / retrain) | stationarity (before / after / retrain) | "
            "compl. slackness (after / retrain) | margin (after / retrain) | cos θ⁻ / θ to retrain |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        a, rt = r["after_kkt"], r["retrained_kkt"]
        lines.append(
            f"| {r['dataset']} | {r['architecture']} | {r['n']} | {r['d']} | {r['forgotten']} | {r['step_s_per_sample'] * 1e3:.2f} | "
            f"{r['forget_s_per_sample'] * 1e3:.2f} | {r['retrain_s']:.2f} | {r['step_speedup_vs_retrain']:.0f}× / {r['speedup_vs_retrain']:.0f}× | "
            f"{r['before']['eval_accuracy']:.3f} / {r['after']['eval_accuracy']:.3f} / {r['retrained']['eval_accuracy']:.3f} | "
            f"{r['before']['forget_accuracy']:.2f} / {r['after']['forget_accuracy']:.2f} / {r['retrained']['forget_accuracy']:.2f} | "
            f"{r['before']['mia_auc']:.2f} / {r['after']['mia_auc']:.2f} / {r['retrained']['mia_auc']:.2f} | "
            f"{a.get('stationarity_before', float('nan')):.3g} / {a['stationarity']:.3g} / {rt['stationarity']:.3g} | "
            f"{a['complementary_slackness']:.3g} / {rt['complementary_slackness']:.3g} | {a['min_margin']:.3g} / {rt['min_margin']:.3g} | "
            f"{r['cos_after_to_retrained']:.4f} / {r['cos_before_to_retrained']:.4f} |"
        )
    text = "\n".join(lines)
    print(text)
    meta = {"when": datetime.now(UTC).isoformat(), "machine": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": 1, "command": "python bench/gradient_ascent.py" + (" --quick" if args.quick else "")}
    name = "gradient_ascent-quick" if args.quick else "gradient_ascent"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2, default=float))
    (OUT / f"{name}.md").write_text(f"`{meta['command']}` ({meta['when']}, one thread)\n\n{text}\n")


if __name__ == "__main__":
    main()
