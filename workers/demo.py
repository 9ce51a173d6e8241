"""`lethe demo`: the whole loop on scikit-learn's digits, over the HTTP API.

Registers a model with core / user / eval splits and ~150 generated subject ids, ingests the
samples, trains, files deletion requests for a few subjects, runs the batch, waits for the clean
version and prints each subject's receipt.
"""

from __future__ import annotations

import io
import time

import httpx
import numpy as np

MODEL = "digits-demo"
FORGET = ["user-0007", "user-0042", "user-0099"]


def wait_healthy(base_url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base_url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become healthy")


def _nats(value) -> str:
    return f"{value:.2g}" if isinstance(value, (int, float)) else str(value)


def _raise_unexpected(r: httpx.Response) -> None:
    """Any error answer stops the demo with it (409 = exists / already running is expected)."""
    if r.status_code >= 400 and r.status_code != 409:
        r.read()
        r.raise_for_status()


def _npz(x, y, subjects, split) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=x, labels=y, subject_ids=np.array(subjects), split=np.array(split))
    return buf.getvalue()


def _wait_job(c: httpx.Client, job_id: str, timeout: float = 600.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise RuntimeError(f"job {job_id} did not finish")


def run(base_url: str, token: str, out=print) -> dict:
    from workers.unlearning.datasets import load_digits_splits

    c = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60,
                     event_hooks={"response": [_raise_unexpected]})
    d = load_digits_splits(seed=0, n_subjects=150)
    spec = {
        "name": MODEL, "architecture": "mlp", "architecture_config": {"in_features": 64, "hidden": [64], "num_classes": 10},
        "input_shape": [64], "num_classes": 10, "linearize": "last:1", "batch_window_s": 30, "batch_size": 50,
        "method_config": {"l2": 1e-3, "noise_std": 3e-4, "core_epochs": 30, "device": "cpu", "max_accuracy_drop": 0.02},
    }
    r = c.post("/v1/models", json=spec)
    if r.status_code == 409:
        out(f"model {MODEL} exists; reusing it")
    else:
        r.raise_for_status()
        for split, subjects in (("core", None), ("eval", None), ("user", list(d["user_subjects"]))):
            x, y = d[split]
            subjects = subjects or [f"{split}-{i:04d}" for i in range(len(y))]
            r = c.post(f"/v1/models/{MODEL}/samples", content=_npz(x, y, subjects, split), headers={"content-type": "application/x-npz"})
            r.raise_for_status()
        out(f"registered {MODEL}: {len(d['core'][1])} core, {len(d['user'][1])} user ({len(set(d['user_subjects']))} subjects), {len(d['eval'][1])} eval samples")
    model = c.get(f"/v1/models/{MODEL}").json()
    if model["latest_version"] is None:
        job = c.post(f"/v1/models/{MODEL}/train").json()
        job = _wait_job(c, job["id"])
        out(f"trained: job {job['status']}, version {job['result_version']}, eval accuracy {job['metrics'].get('eval_accuracy'):.4f}")
    before = c.get(f"/v1/models/{MODEL}/versions/latest").json()
    ids = []
    for subject in FORGET:
        r = c.post("/v1/deletion-requests", json={"subject_id": subject, "model": MODEL, "reason": "demo", "source": "lethe demo"})
        ids.append(r.json()["id"])
    out(f"filed {len(ids)} deletion requests; running the batch now")
    r = c.post(f"/v1/models/{MODEL}/forget-now")
    if r.status_code == 202:
        _wait_job(c, r.json()["id"])
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        reqs = [c.get(f"/v1/deletion-requests/{i}").json() for i in ids]
        if all(q["status"] in ("completed", "failed") for q in reqs):
            break
        time.sleep(0.5)
    after = c.get(f"/v1/models/{MODEL}/versions/latest").json()
    summary = {"before": before, "after": after, "requests": reqs, "receipts": {}}
    out(f"\nversion {before['number']} -> {after['number']}; eval accuracy "
        f"{before['metrics'].get('eval_accuracy', float('nan')):.4f} -> {after['metrics'].get('eval_accuracy', float('nan')):.4f}")
    out(f"bound of v{after['number']}: {_nats(after['bound'].get('kl_nats'))} nats ({after['bound'].get('guarantee')})")
    for subject, q in zip(FORGET, reqs, strict=True):
        rec = c.get(f"/v1/subjects/{subject}").json()
        summary["receipts"][subject] = rec
        m = rec["models"][0] if rec["models"] else {}
        out(f"  {subject}: {q['status']}, samples removed {q['samples_removed']}, clean version {q['clean_version']}, "
            f"held by {m.get('held_by_versions')}, cumulative bound {_nats(m.get('cumulative_kl_nats'))} nats")
    verify = c.get("/v1/audit/verify").json()
    out(f"audit chain: {'ok' if verify['ok'] else 'BROKEN at ' + str(verify['first_broken_seq'])} ({verify['events']} events)")
    out(f"dashboard: {base_url}/admin")
    return summary
