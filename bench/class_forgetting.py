"""Class forgetting benchmark (issue 14, DESIGN §14.3): ``svd_projection`` against retraining
without the classes, on sklearn's 8×8 digits, for one and for three classes at once.

For an MLP and a small CNN with BatchNorm, trained here by the method's ordinary recipe:
  * retrain from scratch without the classes (the oracle), timed;
  * project with the default α (100, 3) and with the grid search, timed (representations, SVDs,
    the update and the BatchNorm re-estimation; the grid search includes its evaluations);
  * held-out accuracy on the retained classes and on the forgotten ones (unmasked network), and
    the class MIA AUC (the forgotten classes' training samples vs their held-out samples; 0.5 =
    indistinguishable), all measured in this process.

    .venv/bin/python bench/class_forgetting.py --quick     # a few minutes on 2 shared cores
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.unlearning.data import TensorSource  # noqa: E402
from workers.unlearning.methods.base import ModelSpec  # noqa: E402
from workers.unlearning.methods.svd_projection.method import SvdProjection  # noqa: E402
from workers.unlearning.standard import StandardModel  # noqa: E402

OUT = ROOT / "bench" / "results"
METHOD = SvdProjection()
DROPS = ([8], [1, 4, 7])


def digits(seed: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return x[perm[:1300]], y[perm[:1300]], x[perm[1300:]], y[perm[1300:]]


def conv_bn(width: int) -> nn.Module:
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.BatchNorm2d(2 * width), nn.ReLU(),
                         nn.Flatten(), nn.Linear(2 * width * 16, 10))


def fresh(kind: str, cfg, seed: int) -> StandardModel:
    torch.manual_seed(seed)
    if kind == "mlp":
        return METHOD.build(ModelSpec("mlp", {"in_features": 64, "num_classes": 10, "hidden": [128, 64]}), cfg.model_copy(update={"seed": seed}))
    return StandardModel(conv_bn(16), "conv_bn", {})


def acc(state, x, y) -> float:
    return METHOD.evaluate(state, TensorSource(x, y), None)["accuracy"]


def measure(state, data, gone_tr, gone_te, forget_src) -> dict:
    xtr, ytr, xte, yte = data
    return {"retain_acc": acc(state, xte[~gone_te], yte[~gone_te]), "forget_acc": acc(state, xte[gone_te], yte[gone_te]),
            "forget_train_acc": acc(state, xtr[gone_tr], ytr[gone_tr]),
            "class_mia": METHOD.membership_auc(state, forget_src, TensorSource(xte, yte), None)}


def run(kind: str, drop: list[int], data, base: StandardModel, cfg, grid: dict) -> dict:
    xtr, ytr, xte, yte = data
    gone_tr, gone_te = torch.isin(ytr, torch.tensor(drop)), torch.isin(yte, torch.tensor(drop))
    retained, removed = TensorSource(xtr[~gone_tr], ytr[~gone_tr]), TensorSource(xtr[gone_tr], ytr[gone_tr])
    row = {"net": kind, "classes": drop, "before": measure(base, data, gone_tr, gone_te, removed)}
    oracle = fresh(kind, cfg, seed=1)
    t0 = time.perf_counter()
    METHOD.train(oracle, retained, cfg)
    row["retrain_s"] = time.perf_counter() - t0
    row["retrain"] = measure(oracle, data, gone_tr, gone_te, removed)
    for label, extra in (("default", {}), ("grid", {"grid_search": True, **grid})):
        state = copy.deepcopy(base)
        t0 = time.perf_counter()
        result = METHOD.forget(state, retained, cfg.model_copy(update=extra), removed=removed)
        row[f"{label}_s"] = time.perf_counter() - t0
        row[label] = {**measure(state, data, gone_tr, gone_te, removed),
                      "alpha_r": result.alpha_r, "alpha_f": result.alpha_f}
    return row


def table(rows: list[dict]) -> str:
    head = ("| net | classes | retrain s | projection s (default α / grid) | speed-up vs retrain (default / grid) "
            "| retained acc: before / retrain / default / grid | forgotten acc: before / retrain / default / grid "
            "| class MIA: retrain / default / grid | grid α_r, α_f |\n|---|---|---|---|---|---|---|---|---|\n")
    out = []
    for r in rows:
        b, o, d, g = r["before"], r["retrain"], r["default"], r["grid"]
        out.append(
            f"| {r['net']} | {','.join(map(str, r['classes']))} | {r['retrain_s']:.2f} | {r['default_s']:.3f} / {r['grid_s']:.2f} "
            f"| {r['retrain_s'] / r['default_s']:.0f}× / {r['retrain_s'] / r['grid_s']:.1f}× "
            f"| {b['retain_acc']:.3f} / {o['retain_acc']:.3f} / {d['retain_acc']:.3f} / {g['retain_acc']:.3f} "
            f"| {b['forget_acc']:.3f} / {o['forget_acc']:.3f} / {d['forget_acc']:.3f} / {g['forget_acc']:.3f} "
            f"| {o['class_mia']:.3f} / {d['class_mia']:.3f} / {g['class_mia']:.3f} | {g['alpha_r']:g}, {g['alpha_f']:g} |")
    return head + "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs and a 3×3 α grid")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: small problems, no OpenMP contention)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = digits()
    cfg = METHOD.config_cls(device="cpu", epochs=15 if args.quick else 40, lr=1e-2, batch_size=128)
    grid = {"alpha_r_grid": [1.0, 30.0, 100.0], "alpha_f_grid": [1.0, 100.0, 1000.0]} if args.quick else {}
    rows = []
    for kind in ("mlp", "cnn"):
        base = fresh(kind, cfg, seed=0)
        METHOD.train(base, TensorSource(data[0], data[1]), cfg)
        for drop in DROPS:
            rows.append(run(kind, drop, data, base, cfg, grid))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    command = "python bench/class_forgetting.py" + (" --quick" if args.quick else "")
    text = (f"# Class forgetting benchmark\n\nCommand: `{command}` on {platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; digits (1,300 train / 497 held out); accuracies on held-out samples, "
            "unmasked network. Times are wall-clock on a shared machine: compare within a row.\n\n" + table(rows))
    print(text)
    name = "class_forgetting-quick" if args.quick else "class_forgetting"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({"command": command, "config": cfg.model_dump(), "rows": rows}, indent=2, default=float))
    (OUT / f"{name}.md").write_text(text)


if __name__ == "__main__":
    main()
