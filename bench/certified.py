"""Certified removal benchmark (issue 15; Guo et al., ICML 2020). Prints markdown tables; writes
bench/results/certified[-quick].{json,md} and a PNG plot (when matplotlib is importable).

    .venv/bin/python bench/certified.py --quick    # under a minute on 2 cores
    .venv/bin/python bench/certified.py            # more noise levels and removals

On two data sets — digits features from a small core network (an MLP trained by cross-entropy on
the core split only, the head on the user split) and a generated 32-d Gaussian mixture (identity
features) — for each noise level s of the secret perturbation b (λ fixed):

1. accuracy of the head (the privacy–utility curve: accuracy against the ε one removal spends,
   and against the ε that K single-sample removals need before a retrain);
2. removals supported before a retrain, against the budget ε (from the cumulative ε_spent);
3. time per removal (one Newton step + its certificate) against retraining the head on D_r (the
   fallback the budget forces), measured in this process.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers.unlearning import ModelSpec, TensorSource, get_method  # noqa: E402
from workers.unlearning.datasets import gaussian_mixture, load_digits_splits  # noqa: E402
from workers.unlearning.methods.certified_removal import head as H  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
METHOD = get_method("certified_removal")
DELTA = 1e-4
EPSILONS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0)


def features(name: str, quick: bool) -> dict:
    """(user features, labels), (eval features, labels), with the method's own extractor."""
    if name == "digits":
        d = load_digits_splits()
        spec, core = ModelSpec("mlp", {"in_features": 64, "hidden": [64], "num_classes": 10}), d["core"]
        user, ev = d["user"], d["eval"]
    else:
        x, y = gaussian_mixture(2500 if quick else 10000, d=32, seed=1)
        cut = len(y) * 4 // 5
        spec, core = ModelSpec("mlp", {"in_features": 32, "hidden": [], "num_classes": 10}), (x[:0], y[:0])
        user, ev = (x[:cut], y[:cut]), (x[cut:], y[cut:])
    cfg = METHOD.config_cls(core_epochs=30)
    model = METHOD.build(spec, cfg)
    METHOD.prepare(model, TensorSource(*core), cfg)
    return {"x": model.features(TensorSource(*user)), "y": torch.as_tensor(user[1]),
            "xe": model.features(TensorSource(*ev)), "ye": torch.as_tensor(ev[1]), "classes": model.num_classes}


def accuracy(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((x @ w.T).argmax(1) == y).double().mean())


def run_set(name: str, data: dict, noise: list[float], lam: float, removals: int, seed: int) -> list[dict]:
    x, y, C = data["x"], data["y"], data["classes"]
    t = H.one_vs_rest(y, C)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=gen)  # the removal order: one sample at a time
    rows = []
    for s in noise:
        budget = H.Budget(1.0, DELTA, s)
        state, info = H.train_head(x, t, s, lam, "logistic")
        acc = accuracy(state.w, data["xe"], data["ye"])
        keep = torch.ones(len(y), dtype=torch.bool)
        spent, t_remove = [], []
        w, beta = state.w, state.beta
        for k in range(removals):
            keep[order[k]] = False
            start = time.perf_counter()
            r = H.remove(x[keep], t[keep], w, state.b, lam, "logistic")
            t_remove.append(time.perf_counter() - start)
            w, beta = r.w, beta + r.bound
            spent.append(budget.spent(beta))
        start = time.perf_counter()
        retrained, _ = H.fit(x[keep], t[keep], state.b, lam, "logistic")
        t_retrain = time.perf_counter() - start
        supported = {str(eps): sum(1 for e in spent if e <= eps) for eps in EPSILONS}
        rows.append({
            "set": name, "n": len(y), "d": x.shape[1], "classes": C, "lambda": lam, "s": s, "accuracy": acc,
            "accuracy_after_removals": accuracy(w, data["xe"], data["ye"]), "train_iterations": info.iterations,
            "train_residual": info.residual, "epsilon_first_removal": spent[0], "epsilon_after_all": spent[-1],
            "removals": removals, "supported_before_retrain": supported,
            "seconds_per_removal": sum(t_remove) / len(t_remove), "seconds_retrain_head": t_retrain,
            "retrain_over_removal": t_retrain / (sum(t_remove) / len(t_remove)),
            "distance_to_retrain": float(torch.linalg.vector_norm(w - retrained)), "epsilon_curve": spent,
        })
    return rows


def table(rows: list[dict]) -> str:
    head = ("| set | s | eval acc. | ε, 1st removal | ε after K | K | " + " | ".join(f"# ≤ ε={e:g}" for e in EPSILONS)
            + " | ms/removal | ms/head retrain | ratio |")
    lines = [head, "|" + "---|" * (10 + len(EPSILONS))]
    for r in rows:
        lines.append(f"| {r['set']} | {r['s']:g} | {r['accuracy']:.4f} | {r['epsilon_first_removal']:.3g} | {r['epsilon_after_all']:.3g} | "
                     f"{r['removals']} | " + " | ".join(str(r["supported_before_retrain"][str(e)]) for e in EPSILONS)
                     + f" | {1e3 * r['seconds_per_removal']:.1f} | {1e3 * r['seconds_retrain_head']:.1f} | {r['retrain_over_removal']:.1f}× |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name in sorted({r["set"] for r in rows}):
        mine = [r for r in rows if r["set"] == name]
        a.plot([r["epsilon_after_all"] for r in mine], [r["accuracy"] for r in mine], "o", label=f"{name} (K={mine[0]['removals']})")
        for r in mine:
            a.annotate(f"s={r['s']:g}", (r["epsilon_after_all"], r["accuracy"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
            b.plot(range(1, len(r["epsilon_curve"]) + 1), r["epsilon_curve"], label=f"{name}, s={r['s']:g}")
    a.set(xscale="log", xlabel=f"ε needed for K single-sample removals (δ={DELTA:g})", ylabel="eval accuracy",
          title="privacy–utility: accuracy vs ε")
    b.set(yscale="log", xlabel="removals since the last retrain", ylabel="ε_spent", title="ε_spent grows with each removal")
    a.legend(fontsize=8)
    b.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    noise = [0.1, 1.0, 10.0, 100.0] if args.quick else [0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]
    removals = 20 if args.quick else 100
    name = "certified-quick" if args.quick else "certified"
    rows = []
    for dataset in ("digits", "generated"):
        rows += run_set(dataset, features(dataset, args.quick), noise, lam=1e-2, removals=removals, seed=0)
    md = table(rows)
    print(md)
    OUT.mkdir(exist_ok=True)
    png = OUT / f"{name}.png"
    plotted = plot(rows, png)
    results = {"command": "python bench/certified.py" + (" --quick" if args.quick else ""), "delta": DELTA,
               "machine": platform.platform(), "torch_threads": torch.get_num_threads(), "rows": rows,
               "plot": png.name if plotted else None}
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=2, default=float))
    (OUT / f"{name}.md").write_text(md + "\n")
    print(f"wrote {OUT / name}.json" + (f" and {png}" if plotted else " (no matplotlib: no plot)"))
    if not all(math.isfinite(r["accuracy"]) for r in rows):
        raise SystemExit("a run produced a non-finite accuracy")


if __name__ == "__main__":
    main()
