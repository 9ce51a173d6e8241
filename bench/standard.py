"""The ``standard`` family: lcodec against a full retrain of the same network (DESIGN §14.1).
Prints markdown tables; writes bench/results/standard{,-quick}.{json,md}.

    .venv/bin/python bench/standard.py --quick    # a few minutes on 2 cores
    .venv/bin/python bench/standard.py            # larger generated set, more batches

Per data set (scikit-learn's digits; a generated 32-d Gaussian mixture), one network trained by
the recipe on all of its training samples, then for a batch of forgotten subjects:
1. time of lcodec's step vs a full retrain from scratch on D_r (same recipe, same seed), in one
   process; accuracies (eval, retained, forgotten), the forgotten samples' loss and the
   loss-threshold MIA AUC (forgotten vs eval) of the original, lcodec (noise-free and released)
   and the retrained model; whether the default measured gates pass;
2. the damping λ against σ = (γ/ε)·√(2 ln(1.25/δ)) and the released model's figures: how the
   defaults were chosen.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers.unlearning import standard  # noqa: E402
from workers.unlearning.data import TensorSource  # noqa: E402
from workers.unlearning.datasets import gaussian_mixture, load_digits_splits  # noqa: E402
from workers.unlearning.gates import check_measured_gates  # noqa: E402
from workers.unlearning.methods.base import ModelSpec  # noqa: E402
from workers.unlearning.registry import get_method  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
METHOD = get_method("lcodec")


def dataset(name: str, quick: bool) -> dict:
    """Training samples with subject ids, and an eval split."""
    if name == "digits":
        d = load_digits_splits(seed=0, n_subjects=150)
        x = np.concatenate([d["core"][0], d["user"][0]])
        y = np.concatenate([d["core"][1], d["user"][1]])
        subjects = np.random.default_rng(1).integers(0, 150, size=len(y))
        return {"train": (x, y), "subjects": subjects, "eval": d["eval"], "arch": {"in_features": 64, "hidden": [64], "num_classes": 10}}
    n = 4_000 if quick else 20_000
    x, y = gaussian_mixture(n + 2_000, d=32, num_classes=10, seed=0, spread=2.0)
    subjects = np.random.default_rng(1).integers(0, n // 10, size=n)
    return {"train": (x[:n], y[:n]), "subjects": subjects, "eval": (x[n:], y[n:]),
            "arch": {"in_features": 32, "hidden": [128], "num_classes": 10}}


def figures(model, retained, forget, ev, cfg) -> dict:
    e, r, f = (METHOD.evaluate(model, s, cfg) for s in (ev, retained, forget))
    return {"eval_accuracy": e["accuracy"], "retain_accuracy": r["accuracy"], "forget_accuracy": f["accuracy"], "forget_loss": f["loss"],
            "mia_auc": METHOD.membership_auc(model, forget, ev, cfg), "forget_n": f["n"], "eval_n": e["n"]}


def run(name: str, quick: bool, subjects_forgotten: int, dampings: list[float]) -> dict:
    d = dataset(name, quick)
    cfg = METHOD.config_cls(device="cpu", epochs=30, lr=1e-2, batch_size=64, weight_decay=1e-4, seed=0)
    spec = ModelSpec("mlp", d["arch"])
    full = TensorSource(*d["train"], ids=np.arange(len(d["train"][1])))
    gone = np.unique(d["subjects"])[:subjects_forgotten]
    mask = np.isin(d["subjects"], gone)
    forget, retained, ev = full.subset(np.flatnonzero(mask)), full.subset(np.flatnonzero(~mask)), TensorSource(*d["eval"])
    original = METHOD.build(spec, cfg)
    t0 = time.perf_counter()
    METHOD.train(original, full, cfg)
    train_s = time.perf_counter() - t0
    state = METHOD.save_private(original)
    oracle = METHOD.build(spec, cfg)
    t0 = time.perf_counter()
    METHOD.retrain(oracle, retained, cfg)
    retrain_s = time.perf_counter() - t0
    rows = {"original": figures(original, retained, forget, ev, cfg), "retrain": {**figures(oracle, retained, forget, ev, cfg), "seconds": retrain_s}}
    sweep = []
    for lam in dampings:
        c = cfg.model_copy(update={"damping": lam})
        model = METHOD.load_private(state, c)
        t0 = time.perf_counter()
        res = METHOD.forget(model, retained, c, removed=forget)
        secs = time.perf_counter() - t0
        noise_free = figures(model, retained, forget, ev, c)
        released = standard.from_bytes(METHOD.serve_bytes(model, METHOD.release(model, c), {}))
        pub = figures(released, retained, forget, ev, c)
        gate = check_measured_gates({"eval_accuracy": rows["original"]["eval_accuracy"], "retain_accuracy": rows["original"]["retain_accuracy"]}, pub, c)
        gate.ok = gate.ok and res.applied
        sweep.append({"damping": lam, "sigma": res.sigma, "seconds": secs, "speedup_vs_retrain": retrain_s / secs, "units": len(res.units),
                      "parameters": res.parameters_selected, "cg_iterations": res.iterations, "damping_used": res.damping, "applied": res.applied,
                      "noise_free": noise_free, "released": pub, "gates_pass": gate.ok, "gate_reasons": gate.reasons})
    return {"dataset": name, "n": len(full), "m": len(forget), "subjects_forgotten": int(len(gone)), "train_seconds": train_s,
            "recipe": cfg.model_dump(include={"optimizer", "lr", "epochs", "batch_size", "weight_decay", "seed"}),
            "architecture": d["arch"], "baseline": rows, "lcodec": sweep}


def table(r: dict) -> str:
    o, rt = r["baseline"]["original"], r["baseline"]["retrain"]
    lines = [f"### {r['dataset']}: n = {r['n']}, forgetting m = {r['m']} samples of {r['subjects_forgotten']} subjects "
             f"(MLP {r['architecture']['hidden']}, full retrain {rt['seconds']:.2f} s)", "",
             "| model | λ | σ | seconds | × vs retrain | eval acc | retained acc | forgotten acc | forgotten loss | MIA AUC | gates |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             f"| original | | | | | {o['eval_accuracy']:.4f} | {o['retain_accuracy']:.4f} | {o['forget_accuracy']:.4f} | {o['forget_loss']:.4f} | {o['mia_auc']:.3f} | |",
             f"| retrain (oracle) | | | {rt['seconds']:.2f} | 1 | {rt['eval_accuracy']:.4f} | {rt['retain_accuracy']:.4f} | {rt['forget_accuracy']:.4f} | {rt['forget_loss']:.4f} | {rt['mia_auc']:.3f} | |"]
    for s in r["lcodec"]:
        for kind in ("noise_free", "released"):
            f = s[kind]
            gates = ("pass" if s["gates_pass"] else "fail: " + "; ".join(s["gate_reasons"])[:80]) if kind == "released" else ""
            lines.append(f"| lcodec {kind.replace('_', '-')} | {s['damping']:g} | {s['sigma']:.3g} | {s['seconds']:.2f} | {s['speedup_vs_retrain']:.1f} | "
                         f"{f['eval_accuracy']:.4f} | {f['retain_accuracy']:.4f} | {f['forget_accuracy']:.4f} | {f['forget_loss']:.4f} | {f['mia_auc']:.3f} | {gates} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller generated set, fewer λ")
    args = ap.parse_args()
    torch.set_num_threads(1)  # small networks: threads only contend on a shared machine
    dampings = [1e-3, 1e-1, 1.0] if args.quick else [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    cmd = "python bench/standard.py" + (" --quick" if args.quick else "")
    results = {"command": cmd, "machine": f"{platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, 1 thread",
               "defaults": METHOD.config_cls().model_dump(include={"damping", "hessian_lipschitz", "gradient_lipschitz", "epsilon", "delta"}),
               "runs": [run("digits", args.quick, 5, dampings), run("generated", args.quick, 5 if args.quick else 20, dampings)]}
    text = f"Command: `{cmd}`\n\n" + "\n".join(table(r) for r in results["runs"])
    print(text)
    OUT.mkdir(exist_ok=True)
    name = "standard-quick" if args.quick else "standard"
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=2, default=float))
    (OUT / f"{name}.md").write_text(text)


if __name__ == "__main__":
    main()
