"""Realistic forgetting benchmark (DESIGN §9, issue 16): a CNN on ≥ 50,000 generated image samples,
a batch of subjects forgotten, against retraining the same CNN from scratch on the remaining data
until it reaches the forgotten model's eval accuracy, in the same run.

    .venv/bin/python bench/realistic.py                       # through the service (default; PostgreSQL, Redis)
    .venv/bin/python bench/realistic.py --quick               # the same, small: a few minutes on 2 cores
    python3 bench/realistic.py --library --device cuda        # the library part alone (no servers): a GPU machine

Data: scikit-learn's 8x8 digits, augmented (random rotation, scale, shear, shift, pixel noise) to
16x16 images; the eval split is drawn from base digits that no training sample comes from. Core
and user splits share the remaining base digits; user samples belong to generated subjects
(``--per-subject`` samples each). Network: the built-in ``cnn`` (3 conv layers by default),
``linearize="last:1"``, so the job forgets by downdating the version's kept Gram sums.

* Service mode: real uvicorn + Celery worker + beat on PostgreSQL/Redis. The model is registered
  and trained over HTTP; ``--subjects`` deletion requests are filed over HTTP, then
  ``forget-now``; the clock runs from the first request filed until every request reads
  ``completed`` (the clean version published). The job's own breakdown comes from its row.
* Library mode: what the job computes, in this process: the Newton step from the kept Gram sums
  (``forget(..., removed=...)``), the evaluation a version records (eval, retain sample, forget
  set, membership AUC), the release noise and the serialised files.

Baseline, in both: the same CNN from a fresh initialisation, trained with the recipe the service
uses for the core (Adam, ``core_lr``, ``core_batch_size``) on core + retained user samples until its
eval accuracy reaches the forgotten version's (checked 4x per epoch, checks not timed: generous to
the retrain). ``speedup`` = retrain seconds / forget seconds. Writes ``<out>/realistic[-quick][-library].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.gram_artifact import gram_artifact_cost  # noqa: E402
from workers.unlearning import MixedLinearModel, ModelSpec, TensorSource, build_network, get_method  # noqa: E402

METHOD = get_method("mixed_linear")
RETAIN_EVAL_MAX = 2000  # as the job (workers.execution.run): retain accuracy on a sample of D_r

SIZES = {
    "full": {"n_core": 10_000, "n_user": 44_000, "n_eval": 2_000, "channels": [16, 32, 32], "hidden": 128, "core_epochs": 4,
             "max_retrain_epochs": 30},
    "quick": {"n_core": 1_500, "n_user": 4_500, "n_eval": 1_000, "channels": [8, 16], "hidden": 64, "core_epochs": 3,
              "max_retrain_epochs": 15},
}
SIDE = 16  # image side (pixels)


# ----------------------------------------------------------------------------- data
def augmented_digits(n_core: int, n_user: int, n_eval: int, per_subject: int, seed: int = 0) -> dict:
    """Core / user / eval splits of augmented 16x16 digits (no download: the digits ship with
    scikit-learn). Eval images come from base digits held out of both training splits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    base = torch.from_numpy(d.images / 16.0).to(torch.float32).unsqueeze(1)
    labels = torch.from_numpy(d.target).to(torch.int64)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=gen)
    held_out, train = perm[: len(perm) // 5], perm[len(perm) // 5 :]

    def draw(pool: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for start in range(0, n, 10_000):
            k = min(10_000, n - start)
            idx = pool[torch.randint(len(pool), (k,), generator=gen)]
            angle = (torch.rand(k, generator=gen) * 2 - 1) * math.radians(15)
            scale = 1.0 / (0.9 + 0.25 * torch.rand(k, generator=gen))
            shear = (torch.rand(k, generator=gen) * 2 - 1) * 0.2
            shift = (torch.rand(k, 2, generator=gen) * 2 - 1) * 0.15
            c, s = torch.cos(angle) * scale, torch.sin(angle) * scale
            theta = torch.stack([torch.stack([c, -s + shear, shift[:, 0]], 1), torch.stack([s, c, shift[:, 1]], 1)], 1)
            grid = F.affine_grid(theta, [k, 1, SIDE, SIDE], align_corners=False)
            x = F.grid_sample(base[idx], grid, align_corners=False)
            xs.append((x + 0.15 * torch.randn(x.shape, generator=gen)).clamp(0, 1))
            ys.append(labels[idx])
        return torch.cat(xs).numpy(), torch.cat(ys).numpy()

    core, user, ev = draw(train, n_core), draw(train, n_user), draw(held_out, n_eval)
    n_subjects = max(1, n_user // per_subject)
    subjects = np.array([f"s{i:06d}" for i in np.random.default_rng(seed).integers(0, n_subjects, size=n_user)])
    return {"core": core, "user": user, "eval": ev, "user_subjects": subjects}


def forget_batch(d: dict, k: int, seed: int = 1) -> tuple[list[str], np.ndarray]:
    """``k`` subjects drawn at random and the mask of user samples kept without them."""
    subj = d["user_subjects"]
    batch = np.random.default_rng(seed).choice(np.unique(subj), size=k, replace=False)
    return sorted(batch.tolist()), ~np.isin(subj, batch)


def arch_config(sz: dict) -> dict:
    return {"in_channels": 1, "height": SIDE, "width": SIDE, "num_classes": 10, "channels": sz["channels"], "hidden": sz["hidden"]}


def method_config(sz: dict, device: str, args, dtype: str = "auto") -> dict:
    return {"device": device, "dtype": dtype, "core_epochs": sz["core_epochs"], "core_lr": args.lr, "core_batch_size": 128, "l2": 1e-3,
            "noise_std": 3e-4, "tol": 1e-9, "max_accuracy_drop": 0.05}


# ----------------------------------------------------------------------------- baseline
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def retrain(arch: dict, d: dict, keep: np.ndarray, target_acc: float, cfg, device: torch.device, max_epochs: int, seed: int = 0) -> dict:
    """The same CNN from scratch on core + retained user samples (float32, Adam with the core's
    learning rate and batch size) until its eval accuracy reaches ``target_acc``. Only the
    training steps are timed; the accuracy checks (4 per epoch) are not."""
    x = torch.from_numpy(np.concatenate([d["core"][0], d["user"][0][keep]])).to(device)
    y = torch.from_numpy(np.concatenate([d["core"][1], d["user"][1][keep]])).to(device)
    xe, ye = torch.from_numpy(d["eval"][0]).to(device), torch.from_numpy(d["eval"][1]).to(device)
    bs = cfg.core_batch_size
    warm = build_network("cnn", arch).to(device)  # CUDA/cuDNN initialisation, not timed
    F.cross_entropy(warm(x[:bs]), y[:bs]).backward()
    torch.manual_seed(seed)
    net = build_network("cnn", arch).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.core_lr)
    gen = torch.Generator().manual_seed(seed)
    batches = math.ceil(len(y) / bs)
    check = max(1, batches // 4)
    spent, acc, epochs = 0.0, 0.0, 0.0
    for epoch in range(max_epochs):
        perm = torch.randperm(len(y), generator=gen).to(device)
        sync(device)
        t0 = time.perf_counter()
        for b in range(batches):
            idx = perm[b * bs : (b + 1) * bs]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
            if (b + 1) % check == 0 or b + 1 == batches:
                sync(device)
                spent += time.perf_counter() - t0
                with torch.no_grad():
                    acc = float(sum(int((net(xe[i : i + 4096]).argmax(1) == ye[i : i + 4096]).sum()) for i in range(0, len(ye), 4096))) / len(ye)
                epochs = epoch + (b + 1) / batches
                if acc >= target_acc:
                    return {"seconds": spent, "eval_accuracy": acc, "epochs": round(epochs, 2), "reached_target": True, "samples": int(len(y))}
                sync(device)
                t0 = time.perf_counter()
    return {"seconds": spent, "eval_accuracy": acc, "epochs": round(epochs, 2), "reached_target": False, "samples": int(len(y))}


# ----------------------------------------------------------------------------- library mode
def dense_oracle(model: MixedLinearModel, retained: TensorSource, mu: float) -> torch.Tensor:
    """Independent float64 solve of the affine head on D_r from the same features:
    (AᵀA/N + μI) W_aᵀ = Aᵀ(t − f0)/N with A = [φ, 1]; flattened in the model's order."""
    rows, rhs, n = None, None, len(retained)
    kept = model.fitted_gram.F if model.fitted_gram is not None else None  # kept rows (every prefix keeps them): f_ML is defined by them
    with torch.no_grad():
        for i, (x, y) in enumerate(retained):
            if kept is not None:
                ids = retained.ids[i * retained.chunk_size : (i + 1) * retained.chunk_size]
                phi = model.fitted_gram.features_of(ids).to(model.device_, torch.float64)
            else:
                phi = model.features(x).to(torch.float64)
            a = torch.cat([phi, torch.ones(len(phi), 1, dtype=torch.float64, device=phi.device)], dim=1)
            f0 = model.head(phi.to(model.dtype_)).to(torch.float64)
            t = model.targets(y, f0.shape[1]).to(torch.float64)
            rows = a.T @ a if rows is None else rows + a.T @ a
            rhs = a.T @ (t - f0) if rhs is None else rhs + a.T @ (t - f0)
    eye = torch.eye(rows.shape[0], dtype=torch.float64, device=rows.device)
    sol = torch.linalg.solve(rows / n + mu * eye, rhs / n)  # (h+1, C)
    parts = {}
    for name, p in model.user.items():
        parts[name] = sol[:-1].T if p.ndim == 2 else sol[-1]
    return torch.cat([parts[n].reshape(-1) for n in model.user])


def forget_library(d: dict, sz: dict, args, device: torch.device, dtype: str, keep: np.ndarray) -> dict:
    """Core, fit, then the forget job's computation on one dtype, timed; exactness and the true KL
    against a dense float64 solve on the same features."""
    cfg = METHOD.config_cls(**method_config(sz, device.type, args, dtype))
    model = METHOD.build(ModelSpec("cnn", arch_config(sz), "last:1"), cfg)
    xu, yu = d["user"]
    user = TensorSource(xu, yu, cfg.chunk_size, ids=np.arange(len(yu)))
    ev = TensorSource(*d["eval"], cfg.chunk_size)
    t = time.perf_counter()
    METHOD.prepare(model, TensorSource(*d["core"], cfg.chunk_size), cfg)
    sync(device)
    t_core = time.perf_counter() - t
    t = time.perf_counter()
    fit = METHOD.train(model, user, cfg)
    sync(device)
    t_fit = time.perf_counter() - t
    acc_before = METHOD.evaluate(model, ev, cfg)["accuracy"]

    retained, removed = user.subset(np.flatnonzero(keep)), user.subset(np.flatnonzero(~keep))
    sync(device)
    t0 = time.perf_counter()
    res = METHOD.forget(model, retained, cfg, removed=removed)
    sync(device)
    t_solve = time.perf_counter() - t0
    bound = METHOD.bound(res, cfg)
    # what the job's evaluate step records (workers.execution.run._measure), then the files it writes
    parts, t = {"solve": t_solve}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        sync(device)
        parts[name] = time.perf_counter() - t
        t = time.perf_counter()

    metrics = {"eval_accuracy": METHOD.evaluate(model, ev, cfg)["accuracy"]}
    lap("eval")
    sample = np.random.default_rng(0).permutation(len(retained))[:RETAIN_EVAL_MAX]
    metrics["retain_accuracy"] = METHOD.evaluate(model, retained.subset(sample), cfg)["accuracy"]
    lap("retain_sample")
    metrics["forget_accuracy"] = METHOD.evaluate(model, removed, cfg)["accuracy"]
    lap("forget_set")
    metrics["mia_auc"] = METHOD.membership_auc(model, removed, ev, cfg)
    lap("mia")
    served = METHOD.serve_bytes(model, METHOD.release(model, cfg), {"model": "realistic"})
    lap("release_serve")
    private = METHOD.save_private(model)
    lap("private_files")
    sync(device)
    t_job = time.perf_counter() - t0
    # the next forget job starts by loading these (not in t_job: this process already holds them)
    t = time.perf_counter()
    METHOD.load_private(private, cfg)
    sync(device)
    t_load = time.perf_counter() - t
    kept_f = model.fitted_gram.F if model.fitted_gram is not None else None
    gram_cost = gram_artifact_cost(model.fitted_gram)

    w = model.flatten(model.user)
    w_star = dense_oracle(model, retained, cfg.l2)
    true_kl = float((w - w_star).norm() ** 2 / (2 * cfg.noise_std**2))
    return {
        "dtype": dtype if dtype in ("mixed", "auto") else str(model.dtype_).removeprefix("torch."), "core_train_s": t_core, "fit_s": t_fit, "fit_path": fit.path, "acc_before": acc_before,
        "forget": {"path": res.path, "solve_s": t_solve, "job_s": t_job, "iterations": res.iterations,
                   "residual_norm": res.residual_norm, "converged": res.converged, "parts_s": parts,
                   "served_bytes": len(served), "private_bytes": sum(len(b) for b in private.values()),
                   "gram_bytes": len(private.get("gram", b"")), "kept_features_bytes": 0 if kept_f is None else kept_f.numel() * kept_f.element_size(),
                   "private_save_s": parts["private_files"], "private_load_s": t_load, "gram_artifact": gram_cost},
        "metrics": metrics, "bound": bound.to_dict(), "passes_kl_gate": bound.kl_nats <= cfg.max_kl_per_release,
        "exactness": float((w - w_star).norm() / w_star.norm()), "true_kl_nats": true_kl, "bound_covers_true_kl": bound.kl_nats >= true_kl,
    }


def run_library(d: dict, sz: dict, args, device: torch.device) -> dict:
    """Each dtype of ``--dtypes`` forgets the same batch; one retrain, to the first one's accuracy."""
    subjects, keep = forget_batch(d, args.subjects)
    runs = [forget_library(d, sz, args, device, dt, keep) for dt in args.dtypes]
    cfg = METHOD.config_cls(**method_config(sz, device.type, args, args.dtypes[0]))
    base = retrain(arch_config(sz), d, keep, runs[0]["metrics"]["eval_accuracy"], cfg, device, sz["max_retrain_epochs"])
    for r in runs:
        r["speedup"] = base["seconds"] / r["forget"]["job_s"]
        r["speedup_solve_only"] = base["seconds"] / r["forget"]["solve_s"]
    first = runs[0]
    return {
        "subjects": len(subjects), "forgotten_samples": int((~keep).sum()), "retained_samples": int(keep.sum()),
        **{k: first[k] for k in ("acc_before", "forget", "metrics", "bound", "exactness", "true_kl_nats", "bound_covers_true_kl")},
        "runs": runs, "retrain": base, "forget_seconds": first["forget"]["job_s"], "speedup": first["speedup"],
    }


# ----------------------------------------------------------------------------- service mode
def _seconds(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def run_service(d: dict, sz: dict, args, device: torch.device) -> dict:
    import httpx

    import stack  # puts tests/integration (procs) on the path

    import procs

    base_url, token, running = stack.start("lethe_bench_realistic", LETHE_PIPELINE__HEARTBEAT_TIMEOUT_S="120")
    try:
        c = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
        mc = method_config(sz, device.type, args, args.dtypes[0])
        spec = {"name": "realistic", "architecture": "cnn", "architecture_config": arch_config(sz), "input_shape": [1, SIDE, SIDE],
                "num_classes": 10, "linearize": "last:1", "batch_window_s": 3600, "batch_size": 100_000, "method_config": mc}
        c.post("/v1/models", json=spec).raise_for_status()
        for split in ("core", "eval", "user"):
            x, y = d[split]
            subj = d["user_subjects"] if split == "user" else np.array([f"{split}-{i}" for i in range(len(y))])
            for s in range(0, len(y), 10_000):  # uploads stay under the body limit
                body = stack.npz(x[s : s + 10_000], y[s : s + 10_000], subj[s : s + 10_000], split)
                c.post("/v1/models/realistic/samples", content=body, headers={"content-type": "application/x-npz"}).raise_for_status()
        t = time.perf_counter()
        job = c.post("/v1/models/realistic/train").json()
        procs.wait_for(lambda: c.get(f"/v1/jobs/{job['id']}").json()["status"] in ("succeeded", "failed"), 3600, "train",
                       on_timeout=running[1].tail)
        train = c.get(f"/v1/jobs/{job['id']}").json()
        if train["status"] != "succeeded":
            raise SystemExit(f"train job failed: {train['error']}\n{running[1].tail()}")
        t_train = time.perf_counter() - t
        # requests arrive once the worker is idle again (its task ends after the job's publish)
        procs.wait_for(lambda: f"job.run[{job['id']}] succeeded" in running[1].log.read_text(), 300, "the worker to finish the train task")
        before = c.get("/v1/models/realistic/versions/latest").json()

        subjects, keep = forget_batch(d, args.subjects)
        t0 = time.perf_counter()
        ids = [c.post("/v1/deletion-requests", json={"subject_id": s, "model": "realistic"}).json()["id"] for s in subjects]
        t_filed = time.perf_counter() - t0
        fjob = c.post("/v1/models/realistic/forget-now").json()

        def done():
            page = c.get("/v1/deletion-requests?status=completed&limit=500").json()["items"]
            return len({r["id"] for r in page} & set(ids)) == len(ids)

        procs.wait_for(done, 3600, "the forget", interval=0.05, on_timeout=running[1].tail)
        t_forget = time.perf_counter() - t0
        fj = c.get(f"/v1/jobs/{fjob['id']}").json()
        after = c.get("/v1/models/realistic/versions/latest").json()
    finally:
        for p in running:
            p.kill()
    cfg = METHOD.config_cls(**mc)
    base = retrain(arch_config(sz), d, keep, after["metrics"]["eval_accuracy"], cfg, device, sz["max_retrain_epochs"])
    m = fj["metrics"]
    return {
        "subjects": len(subjects), "forgotten_samples": int((~keep).sum()), "retained_samples": int(keep.sum()),
        "train_job_s": t_train, "acc_before": before["metrics"].get("eval_accuracy"),
        "forget": {"request_to_clean_s": t_forget, "filing_s": t_filed, "job_created_to_started_s": _seconds(fj["created_at"], fj["started_at"]),
                   "job_started_to_finished_s": _seconds(fj["started_at"], fj["finished_at"]), "collect_s": m.get("seconds_collect"),
                   "solve_s": m.get("seconds_solve"), "evaluate_s": m.get("seconds_evaluate"), "iterations": m.get("solve_iterations"),
                   "version": after["number"], "parent": after["parent"]},
        "metrics": {k: after["metrics"].get(k) for k in ("eval_accuracy", "retain_accuracy", "forget_accuracy", "mia_auc")},
        "bound": after["bound"],
        "retrain": base, "forget_seconds": t_forget, "speedup": base["seconds"] / t_forget,
    }


# ----------------------------------------------------------------------------- report
def table(r: dict, library: bool) -> str:
    f, b, m = r["forget"], r["retrain"], r["metrics"]
    rows = [("forgotten", f"{r['subjects']} subjects, {r['forgotten_samples']} samples of {r['forgotten_samples'] + r['retained_samples']} user")]
    if library:
        rows += [("forget: Newton step from the kept Gram sums", f"{f['solve_s']:.4f} s ({f['path']}, {f['iterations']} iteration(s))"),
                 ("forget: step + evaluation + release + files (what the job computes)", f"{f['job_s']:.4f} s"),
                 ("  of which: " + " / ".join(f["parts_s"]), " / ".join(f"{v:.4f}" for v in f["parts_s"].values()) + " s")]
    else:
        rows += [("forget through the service: first request filed → all completed", f"{f['request_to_clean_s']:.2f} s"),
                 ("  filing the requests over HTTP", f"{f['filing_s']:.2f} s"),
                 ("  job created → started (outbox, broker, worker)", f"{f['job_created_to_started_s']:.2f} s"),
                 ("  job started → finished (collect / solve / evaluate s)",
                  f"{f['job_started_to_finished_s']:.2f} s ({f['collect_s'] or 0:.2f} / {f['solve_s'] or 0:.2f} / {f['evaluate_s'] or 0:.2f})")]
    rows += [("full retrain of the same CNN to that accuracy", f"{b['seconds']:.2f} s ({b['epochs']} epochs of {b['samples']} samples"
              + ("" if b["reached_target"] else ", target NOT reached: a lower bound") + ")"),
             ("**speed-up**", f"**{r['speedup']:.0f}×**" + ("" if r["speedup"] >= 100 else " (target ≥ 100×: missed)")),
             ("eval accuracy: before / after forget / retrain", f"{r['acc_before']:.4f} / {m['eval_accuracy']:.4f} / {b['eval_accuracy']:.4f}"),
             ("retain / forget-set accuracy, membership AUC", f"{m['retain_accuracy']:.4f} / {m['forget_accuracy']:.4f}, {m['mia_auc']:.3f}"),
             ("bound kl_nats (guarantee)", f"{r['bound']['kl_nats']:.3g} ({r['bound']['guarantee']})")]
    if library:
        rows += [("‖w' − w*‖/‖w*‖ against a dense float64 solve; true KL", f"{r['exactness']:.3g}; {r['true_kl_nats']:.3g} nats"
                  + ("" if r["bound_covers_true_kl"] else " (ABOVE the bound)"))]
        for o in r["runs"]:
            rows.append((f"dtype {o['dtype']}: forget job s (speed-up), eval acc, bound (KL gate), true KL",
                         f"{o['forget']['job_s']:.4f} ({o['speedup']:.0f}×), {o['metrics']['eval_accuracy']:.4f}, {o['bound']['kl_nats']:.3g} "
                         f"({'passes' if o['passes_kl_gate'] else 'FAILS'}), {o['true_kl_nats']:.3g}"))
            rows.append((f"dtype {o['dtype']}: " + " / ".join(o["forget"]["parts_s"]) + " s",
                         " / ".join(f"{v:.4f}" for v in o["forget"]["parts_s"].values())))
            fo = o["forget"]
            rows.append((f"dtype {o['dtype']}: private files bytes (gram; of which kept features), save / load s",
                         f"{fo['private_bytes']:,} ({fo['gram_bytes']:,}; {fo['kept_features_bytes']:,}), "
                         f"{fo['private_save_s']:.4f} / {fo['private_load_s']:.4f}"))
            for k, g in fo.get("gram_artifact", {}).items():
                rows.append((f"dtype {o['dtype']}: gram artifact {k.replace('_', ' ')}: bytes, save / load s (best of 3)",
                             f"{g['bytes']:,}, {g['save_s']:.4f} / {g['load_s']:.4f}"))
    return "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes on 2 CPU cores)")
    ap.add_argument("--library", action="store_true", help="the library part alone, in this process (no PostgreSQL, Redis or servers)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the forget job and the retrain run")
    ap.add_argument("--subjects", type=int, default=10, help="subjects forgotten in the batch")
    ap.add_argument("--per-subject", type=int, default=10, help="user samples per subject (on average)")
    ap.add_argument("--dtypes", default=None, help="comma-separated dtypes of the mixed-linear model (auto, float64, mixed, float32), "
                    "the first one headlines (library mode runs each; default: mixed,float64,float32 on cuda, float64,mixed on cpu)")
    ap.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate of the core and of the retrain")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for the JSON and markdown results")
    args = ap.parse_args()
    device = torch.device(args.device)
    args.dtypes = (args.dtypes or ("mixed,float64,float32" if device.type == "cuda" else "float64,mixed")).split(",")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    sz = SIZES["quick" if args.quick else "full"]
    t = time.perf_counter()
    d = augmented_digits(sz["n_core"], sz["n_user"], sz["n_eval"], args.per_subject)
    t_data = time.perf_counter() - t
    print(f"data: {sz['n_core']} core + {sz['n_user']} user + {sz['n_eval']} eval images ({t_data:.1f} s)", flush=True)
    result = (run_library if args.library else run_service)(d, sz, args, device)
    command = "python bench/realistic.py" + "".join(f" {a}" for a in sys.argv[1:] if not a.startswith("--out") and a != str(args.out))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    out = {"command": command, "mode": "library" if args.library else "service", "device": args.device, "gpu": gpu,
           "machine": f"{platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
           "sizes": {**sz, "side": SIDE, "per_subject": args.per_subject}, "data_s": t_data, **result}
    name = "realistic" + ("-quick" if args.quick else "") + ("-library" if args.library else "")
    text = (f"# Realistic benchmark ({out['mode']}, {args.device}{', ' + gpu if gpu else ''})\n\nCommand: `{command}` on {out['machine']}. "
            f"CNN {sz['channels']} conv channels, hidden {sz['hidden']}, linearize last:1; {sz['n_core'] + sz['n_user']} training + "
            f"{sz['n_eval']} eval images ({SIDE}x{SIDE}).\n\n" + table(result, args.library) + "\n")
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(out, indent=2, default=float))
    (args.out / f"{name}.md").write_text(text)


if __name__ == "__main__":
    main()
