"""Forgetting benchmarks (DESIGN §9). Prints markdown tables; writes bench/results/forgetting.{json,md}.

    .venv/bin/python bench/forgetting.py            # full run (a few minutes on 2 cores)
    .venv/bin/python bench/forgetting.py --quick    # smaller, under a minute

1. forget a batch: Newton step vs full SGD retrain of the same network from scratch (to the
   forgotten model's eval accuracy) vs exact refit of the user weights; accuracies of each;
2. exactness ‖w' − w*_r‖/‖w*_r‖ against an independent dense float64 solve, and the bound;
3. accuracy against noise level (choosing noise_std);
4. batches of 1, 10, 100, 1000 subjects;
5. one CG iteration against one forward+backward pass over the same data.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers.unlearning import MixedLinearModel, Objective, TensorSource, evaluate, get_method, information_bound  # noqa: E402
from workers.unlearning.datasets import gaussian_mixture, load_digits_splits  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
METHOD = get_method("mixed_linear")


def timed(fn, repeat=1):
    best = math.inf
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def dataset(name: str, quick: bool):
    if name == "digits":
        d = load_digits_splits(seed=0, n_subjects=150)
        return {**d, "arch": {"in_features": 64, "hidden": [128], "num_classes": 10}}
    n = 20_000 if quick else 60_000
    x, y = gaussian_mixture(n + 6_000, d=32, num_classes=10, seed=0, spread=2.0)
    rng = np.random.default_rng(0)
    n_core = 6_000
    n_eval = 6_000
    n_user = n - n_core
    subjects = np.array([f"s{i:05d}" for i in rng.integers(0, n_user // 10, size=n_user)])
    return {
        "core": (x[:n_core], y[:n_core]),
        "eval": (x[n_core:n_core + n_eval], y[n_core:n_core + n_eval]),
        "user": (x[n_core + n_eval:n_core + n_eval + n_user], y[n_core + n_eval:n_core + n_eval + n_user]),
        "user_subjects": subjects[: len(x[n_core + n_eval:n_core + n_eval + n_user])],
        "arch": {"in_features": 32, "hidden": [256, 256], "num_classes": 10},
    }


def dense_oracle_last1(model: MixedLinearModel, x: np.ndarray, y: np.ndarray, mu: float, kappa: float) -> torch.Tensor:
    """Independent float64 solve for a linear head: f = f0 + W_u φ + b_u, per class
    (AᵀA/N + μI) w_c = Aᵀ(t_c − f0_c)/N with A = [φ, 1]."""
    xt = torch.from_numpy(x).to(torch.float64)
    with torch.no_grad():
        phi = model.prefix(xt) if model.prefix is not None else xt
        f0 = model.network(xt)
    n = len(y)
    A = torch.cat([phi, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    t = torch.zeros(n, f0.shape[1], dtype=torch.float64)
    t[torch.arange(n), torch.from_numpy(y)] = kappa
    G = A.T @ A / n + mu * torch.eye(A.shape[1], dtype=torch.float64)
    sol = torch.linalg.solve(G, A.T @ (t - f0) / n)  # (h+1, C)
    W, b = sol[:-1].T, sol[-1]
    names = list(model.user)
    return torch.cat([W.reshape(-1), b]) if names[0].endswith("weight") else torch.cat([b, W.reshape(-1)])


def sgd_retrain(arch, core, retained, ev, target_acc, max_epochs, seed=0):
    """What a user would do without Lethe: retrain the network from scratch (SGD, momentum) on
    all remaining data (core + retained user samples) until its eval accuracy reaches the
    forgotten model's. Accuracy is checked 4× per epoch and the checks are not timed (generous
    to SGD)."""
    from workers.unlearning import build_network

    torch.manual_seed(seed)
    net = build_network("mlp", arch)
    x = torch.from_numpy(np.concatenate([core[0], retained[0]]))
    y = torch.from_numpy(np.concatenate([core[1], retained[1]]))
    xe, ye = torch.from_numpy(ev[0]), torch.from_numpy(ev[1])
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    spent, acc, epochs, steps = 0.0, 0.0, 0.0, 0
    batches_per_epoch = math.ceil(len(y) / 128)
    check = max(1, batches_per_epoch // 4)
    for epoch in range(max_epochs):
        perm = torch.randperm(len(y))
        t0 = time.perf_counter()
        for b, i in enumerate(range(0, len(y), 128)):
            idx = perm[i : i + 128]
            opt.zero_grad()
            loss_fn(net(x[idx]), y[idx]).backward()
            opt.step()
            steps += 1
            if (b + 1) % check == 0 or b + 1 == batches_per_epoch:
                spent += time.perf_counter() - t0
                with torch.no_grad():
                    acc = float((net(xe).argmax(1) == ye).float().mean())
                epochs = epoch + (b + 1) / batches_per_epoch
                if acc >= target_acc:
                    return {"seconds": spent, "eval_accuracy": acc, "epochs": round(epochs, 2), "reached_target": True}
                t0 = time.perf_counter()
    return {"seconds": spent, "eval_accuracy": acc, "epochs": round(epochs, 2), "reached_target": False}


def run_dataset(name: str, linearize: str, quick: bool, cfg) -> dict:
    d = dataset(name, quick)
    xu, yu = d["user"]
    subj = np.asarray(d["user_subjects"])
    uniq = np.unique(subj)
    rng = np.random.default_rng(1)
    batch = rng.choice(uniq, size=min(10, len(uniq)), replace=False)
    keep = ~np.isin(subj, batch)

    model = MixedLinearModel.build("mlp", d["arch"], linearize, cfg.target_scale, device="cpu", seed=0)
    _, t_core = timed(lambda: METHOD.train_core(model, TensorSource(*d["core"], chunk_size=cfg.chunk_size), cfg))
    fit_res, t_fit = timed(lambda: METHOD.fit(model, TensorSource(xu, yu, cfg.chunk_size), cfg))
    ev = TensorSource(*d["eval"])
    acc_before = evaluate(model, ev)["accuracy"]
    private = {k: v.clone() for k, v in model.user.items()}

    retained = TensorSource(xu[keep], yu[keep], cfg.chunk_size)
    downdate = None
    if linearize == "last:1":
        fitted, t_gram = model.fitted_gram, 0.0  # a by-product of fit (kept privately)
        (dres, _), t_down = timed(lambda: METHOD.forget_downdate(model, fitted, TensorSource(xu[~keep], yu[~keep], cfg.chunk_size, ids=np.nonzero(~keep)[0]), cfg), repeat=1)
        w_down = model.flatten(model.user)
        model.user = {k: v.clone() for k, v in private.items()}
        model.fitted_gram = fitted
        downdate = {"seconds": t_down, "iterations": dres.iterations, "residual_norm": dres.residual_norm}
    res, t_forget = timed(lambda: METHOD.forget(model, retained, cfg))
    acc_forget = evaluate(model, ev)["accuracy"]
    w_forget = model.flatten(model.user)

    refit = MixedLinearModel.build("mlp", d["arch"], linearize, cfg.target_scale, device="cpu", seed=0)
    refit.network.load_state_dict(model.network.state_dict())
    refit._split()
    refit_res, t_refit = timed(lambda: METHOD.fit(refit, retained, cfg))
    acc_refit = evaluate(refit, ev)["accuracy"]

    row = {
        "dataset": name, "linearize": linearize, "n_user": int(len(yu)), "n_forgotten": int((~keep).sum()), "subjects_forgotten": len(batch),
        "user_params": model.num_user_parameters, "core_train_s": t_core, "fit_s": t_fit, "fit_iterations": fit_res.iterations,
        "forget_s": t_forget, "forget_iterations": res.iterations, "refit_s": t_refit, "refit_iterations": refit_res.iterations,
        "acc_before": acc_before, "acc_after_forget": acc_forget, "acc_refit": acc_refit, "residual_norm": res.residual_norm,
    }
    bound = METHOD.bound(res, cfg)
    row["kl_nats"] = bound.kl_nats
    if linearize == "last:1":
        w_star = dense_oracle_last1(model, xu[keep], yu[keep], cfg.l2, cfg.target_scale)
        row["exactness"] = float((w_forget - w_star).norm() / w_star.norm())
        row["true_kl_nats"] = float((w_forget - w_star).norm() ** 2 / (2 * cfg.noise_std**2))
    if downdate is not None:
        downdate["relative_to_forget"] = float((w_down - w_forget).norm() / w_forget.norm())
        row["forget_downdate"] = downdate
    sgd = sgd_retrain(d["arch"], d["core"], (xu[keep], yu[keep]), d["eval"], acc_forget, max_epochs=10 if quick else 40)
    row["sgd_retrain"] = sgd
    row["speedup_vs_sgd"] = sgd["seconds"] / t_forget
    if downdate is not None:
        downdate["speedup_vs_sgd"] = sgd["seconds"] / downdate["seconds"]
    model.user = private
    return row, model, d, keep, res


def noise_sweep(model, d, keep, res, cfg, levels, draws=5) -> list[dict]:
    ev = TensorSource(*d["eval"])
    private = {k: v.clone() for k, v in model.user.items()}
    xu, yu = d["user"]
    METHOD.forget(model, TensorSource(xu[keep], yu[keep], cfg.chunk_size), cfg)
    clean = evaluate(model, ev)["accuracy"]
    w = {k: v.clone() for k, v in model.user.items()}
    rows = []
    for s in levels:
        accs = []
        c = cfg.model_copy(update={"noise_std": s})
        for _ in range(draws):
            model.set_user_parameters(METHOD.release(model, c))
            accs.append(evaluate(model, ev)["accuracy"])
            model.user = {k: v.clone() for k, v in w.items()}
        kl = information_bound(res.residual_norm, cfg.l2, s).kl_nats
        rows.append({"noise_std": s, "accuracy": float(np.mean(accs)), "drop_pp": 100 * (clean - float(np.mean(accs))), "kl_nats": kl})
    model.user = private
    return rows


def batch_sizes(cfg, quick) -> list[dict]:
    d = dataset("generated", quick)
    xu, yu = d["user"]
    subj = np.asarray(d["user_subjects"])
    uniq = np.unique(subj)
    model = MixedLinearModel.build("mlp", d["arch"], "last:1", cfg.target_scale, device="cpu", seed=0)
    METHOD.train_core(model, TensorSource(*d["core"], chunk_size=cfg.chunk_size), cfg)
    METHOD.fit(model, TensorSource(xu, yu, cfg.chunk_size), cfg)
    private = {k: v.clone() for k, v in model.user.items()}
    rows = []
    rng = np.random.default_rng(2)
    METHOD.forget(model, TensorSource(xu, yu, cfg.chunk_size), cfg)  # warm-up (allocator, thread pools)
    for k in (1, 10, 100, 1000):
        batch = rng.choice(uniq, size=min(k, len(uniq)), replace=False)
        keep = ~np.isin(subj, batch)
        model.user = {kk: v.clone() for kk, v in private.items()}
        res, t = timed(lambda: METHOD.forget(model, TensorSource(xu[keep], yu[keep], cfg.chunk_size), cfg))
        rows.append({"subjects": int(len(batch)), "samples": int((~keep).sum()), "seconds": t, "iterations": res.iterations})
    base = rows[0]["seconds"]
    for r in rows:
        r["ratio_to_one"] = r["seconds"] / base
    return rows


def median_time(fn, repeat=7) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def cg_vs_pass(cfg, quick) -> list[dict]:
    """One CG iteration (H p with float32 passes, float64 accumulation and CG vectors) against one
    float32 forward+backward (cross-entropy) of the same network over the same data, in the same
    process, one thread, median of 7 interleaved CPU-time ratios: the activation cache fitting in ``cache_bytes``, and streaming (``cache_bytes=0``)."""
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: CPU time per pass is then stable on a shared machine
    cases = [("digits", dataset("digits", quick))]
    gen = dataset("generated", True)  # 14,000 user samples, MLP 32-256-256-10
    cases.append(("generated", gen))
    for name, d in cases:
        x, y = d["user"]
        model = MixedLinearModel.build("mlp", d["arch"], "all", cfg.target_scale, device="cpu", seed=0)
        METHOD.train_core(model, TensorSource(*d["core"]), cfg.model_copy(update={"core_epochs": 2}))
        net32 = copy.deepcopy(model.network).to(torch.float32)
        for p in net32.parameters():
            p.requires_grad_(True)
        xt, yt = torch.from_numpy(x).to(torch.float32), torch.from_numpy(y)
        chunk = cfg.chunk_size

        def fwd_bwd():
            net32.zero_grad(set_to_none=True)
            for s in range(0, len(yt), chunk):
                nn.functional.cross_entropy(net32(xt[s:s + chunk]), yt[s:s + chunk], reduction="sum").backward()

        for regime, cache_bytes, pd in (("float32, cache fits", cfg.cache_bytes, torch.float32), ("float32, streaming", 0, torch.float32),
                                        ("float64, cache fits", cfg.cache_bytes, None)):
            src = TensorSource(x, y, chunk)
            obj = Objective(model, src, cfg.l2, cache_bytes=cache_bytes, precondition=cfg.precondition, pass_dtype=pd)
            fast = obj._fast is not None
            v = torch.randn(model.num_user_parameters, dtype=torch.float64)
            k = 3
            obj.cg(v, 0.0, 1, fast=fast)
            fwd_bwd()
            t_cg, t_fb = [], []
            for _ in range(7):  # interleaved, CPU seconds of this process (other work shares the cores)
                t = time.process_time()
                fwd_bwd()
                t_fb.append(time.process_time() - t)
                t = time.process_time()
                obj.cg(v, 0.0, k, fast=fast)
                t_cg.append((time.process_time() - t) / k)
            cached = sum(t.numel() * t.element_size() for st in (obj._fast_cache or obj._cache or []) for t in st[2] if isinstance(t, torch.Tensor))
            ratios = [a / b for a, b in zip(t_cg, t_fb)]
            rows.append({"data": f"{name} ({len(y)} user)", "params": model.num_user_parameters, "regime": regime,
                         "cache_mib": cached / 2**20, "chunk": chunk, "cg_iteration_s": float(np.median(t_cg)),
                         "forward_backward_s": float(np.median(t_fb)), "ratio": float(np.median(ratios)),
                         "ratio_min_max": [min(ratios), max(ratios)]})
            print(rows[-1], flush=True)
    torch.set_num_threads(threads)
    return rows


def md_table(rows, cols) -> str:
    out = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(f(r) for _, f in cols) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cg-only", action="store_true", help="only section 5 (CG iteration vs forward+backward)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = METHOD.config_cls(core_epochs=10 if args.quick else 30, device="cpu", chunk_size=4096, tol=1e-9)
    results: dict = {"machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, {torch.get_num_threads()} threads",
                     "command": "python bench/forgetting.py" + (" --quick" if args.quick else ""), "config": cfg.model_dump()}
    if args.cg_only:
        rows = cg_vs_pass(cfg, args.quick)
        text = "| data | params | regime | activation cache MiB | chunk | CG iteration s | forward+backward s | ratio (min–max) |\n|---|---|---|---|---|---|---|---|\n"
        text += "\n".join(f"| {r['data']} | {r['params']} | {r['regime']} | {r['cache_mib']:.1f} | {r['chunk']} | {r['cg_iteration_s']:.3g} | {r['forward_backward_s']:.3g} | {r['ratio']:.2f} ({r['ratio_min_max'][0]:.2f}–{r['ratio_min_max'][1]:.2f}) |" for r in rows)
        print(text)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "cg-vs-pass.json").write_text(json.dumps({**results, "command": "python bench/forgetting.py --cg-only", "cg_vs_pass": rows}, indent=2, default=float))
        (OUT / "cg-vs-pass.md").write_text(text + "\n")
        return
    forget_rows = []
    keepers = None
    for name, lin in (("digits", "last:1"), ("digits", "all"), ("generated", "last:1")):
        row, model, d, keep, res = run_dataset(name, lin, args.quick, cfg)
        forget_rows.append(row)
        if name == "digits" and lin == "last:1":
            keepers = (model, d, keep, res)
        print(f"{name} {lin}: forget {row['forget_s']:.3f}s, sgd retrain {row['sgd_retrain']['seconds']:.2f}s", flush=True)
    results["forget"] = forget_rows
    results["noise"] = noise_sweep(*keepers, cfg, [0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    ok = [r for r in results["noise"] if r["drop_pp"] <= 0.1]
    results["chosen_noise_std"] = max(r["noise_std"] for r in ok) if ok else None
    results["batches"] = batch_sizes(cfg, args.quick)
    results["cg_vs_pass"] = cg_vs_pass(cfg, args.quick)

    f3 = lambda v: f"{v:.3g}"  # noqa: E731
    md = [f"# Forgetting benchmark\n\nCommand: `{results['command']}` on {results['machine']}.\n",
          "## 1–2. Forget a batch of 10 subjects: Newton step vs retraining\n",
          md_table(forget_rows, [
              ("data", lambda r: f"{r['dataset']} ({r['n_user']} user)"), ("linearize", lambda r: r["linearize"]),
              ("user params", lambda r: str(r["user_params"])), ("forgotten samples", lambda r: str(r["n_forgotten"])),
              ("Newton forget s", lambda r: f3(r["forget_s"])), ("exact refit s", lambda r: f3(r["refit_s"])),
              ("SGD retrain s (epochs)", lambda r: f"{f3(r['sgd_retrain']['seconds'])} ({r['sgd_retrain']['epochs']})"),
              ("speed-up vs SGD", lambda r: f"{r['speedup_vs_sgd']:.0f}×"),
              ("forget by Gram downdate s (speed-up)", lambda r: f"{f3(r['forget_downdate']['seconds'])} ({r['forget_downdate']['speedup_vs_sgd']:.0f}×)" if "forget_downdate" in r else "n/a"),
              ("acc before / forget / refit / SGD", lambda r: f"{r['acc_before']:.4f} / {r['acc_after_forget']:.4f} / {r['acc_refit']:.4f} / {r['sgd_retrain']['eval_accuracy']:.4f}"),
              ("‖w'−w*‖/‖w*‖ (dense oracle)", lambda r: f3(r["exactness"]) if "exactness" in r else "n/a (no dense oracle)"),
              ("bound kl_nats (true)", lambda r: f"{f3(r['kl_nats'])}" + (f" ({f3(r['true_kl_nats'])})" if "true_kl_nats" in r else "")),
          ]),
          "\n## 3. Accuracy against release noise (digits, last:1; 5 draws each)\n",
          md_table(results["noise"], [("noise_std s", lambda r: f3(r["noise_std"])), ("eval accuracy", lambda r: f"{r['accuracy']:.4f}"),
                                      ("drop (pp)", lambda r: f"{r['drop_pp']:.3f}"), ("kl_nats at this s", lambda r: f3(r["kl_nats"]))]),
          f"\nLargest s costing ≤ 0.1 pp: **{results['chosen_noise_std']}**.\n",
          "\n## 4. Batch size (generated set, last:1)\n",
          md_table(results["batches"], [("subjects", lambda r: str(r["subjects"])), ("samples", lambda r: str(r["samples"])),
                                        ("seconds", lambda r: f3(r["seconds"])), ("solver iterations (CG; 1 = Cholesky)", lambda r: str(r["iterations"])),
                                        ("× one subject", lambda r: f"{r['ratio_to_one']:.2f}")]),
          "\n## 5. One CG iteration (float32 passes) vs one float32 forward+backward, linearize=all\n",
          md_table(results["cg_vs_pass"], [("data", lambda r: r["data"]), ("regime", lambda r: r["regime"]), ("CG iteration s", lambda r: f3(r["cg_iteration_s"])),
                                           ("forward+backward s", lambda r: f3(r["forward_backward_s"])), ("ratio", lambda r: f"{r['ratio']:.2f}")]),
          ]
    text = "\n".join(md) + "\n"
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    name = "forgetting-quick" if args.quick else "forgetting"
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=2, default=float))
    (OUT / f"{name}.md").write_text(text)


if __name__ == "__main__":
    main()
