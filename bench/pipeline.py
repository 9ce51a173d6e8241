"""Pipeline benchmark: request → clean version latency, subjects forgotten per hour, and `latest`
manifest latency with and without 304. Real uvicorn + Celery worker + beat on PostgreSQL/Redis.

    .venv/bin/python bench/pipeline.py [--requests 300]

Writes bench/results/pipeline.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import stack  # noqa: E402  (puts tests/integration on the path)
import procs  # noqa: E402  (process helpers shared with the integration tests)
from stack import npz  # noqa: E402

DB = "lethe_bench_pipeline"
OUT = ROOT / "bench" / "results"


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--window", type=int, default=5, help="batch window (s) for the latency run")
    args = ap.parse_args()
    base, token, running = stack.start(DB, LETHE_PIPELINE__HEARTBEAT_TIMEOUT_S="60")
    results: dict = {"command": "python bench/pipeline.py" + (f" --requests {args.requests}" if args.requests != 300 else "")}
    try:
        c = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        from workers.unlearning.datasets import load_digits_splits

        d = load_digits_splits(seed=0, n_subjects=600)
        spec = {"name": "digits", "architecture": "mlp", "architecture_config": {"in_features": 64, "hidden": [64], "num_classes": 10},
                "input_shape": [64], "num_classes": 10, "linearize": "last:1", "batch_window_s": args.window, "batch_size": 100,
                "method_config": {"core_epochs": 20, "device": "cpu", "max_accuracy_drop": 0.05}}
        c.post("/v1/models", json=spec).raise_for_status()
        for split in ("core", "eval", "user"):
            x, y = d[split]
            subj = list(d["user_subjects"]) if split == "user" else [f"{split}-{i}" for i in range(len(y))]
            c.post("/v1/models/digits/samples", content=npz(x, y, subj, split), headers={"content-type": "application/x-npz"}).raise_for_status()
        job = c.post("/v1/models/digits/train").json()
        procs.wait_for(lambda: c.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded", 300, "train")
        subjects = sorted(set(d["user_subjects"]))

        # 1. latency of one request with the batch window
        lat = []
        for i in range(3):
            t0 = time.perf_counter()
            rid = c.post("/v1/deletion-requests", json={"subject_id": subjects[i], "model": "digits"}).json()["id"]
            procs.wait_for(lambda: c.get(f"/v1/deletion-requests/{rid}").json()["status"] == "completed", 300, "request", interval=0.1)
            lat.append(time.perf_counter() - t0)
        results["latency"] = {"batch_window_s": args.window, "seconds": lat, "median_s": statistics.median(lat)}

        # 2. steady load: requests arriving over 30 s, batched by the scheduler
        n = min(args.requests, len(subjects) - 3)
        t0 = time.perf_counter()
        ids = []
        for i in range(n):
            ids.append(c.post("/v1/deletion-requests", json={"subject_id": subjects[3 + i], "model": "digits"}).json()["id"])
            time.sleep(max(0.0, t0 + (i + 1) * 30.0 / n - time.perf_counter()))

        def done():
            r = c.get("/v1/deletion-requests?status=completed&limit=500").json()
            return len(r["items"]) >= n + 3

        procs.wait_for(done, 900, "steady-load requests", interval=0.5)
        wall = time.perf_counter() - t0
        jobs = c.get("/v1/jobs?limit=500").json()["items"]
        forget_jobs = [j for j in jobs if j["kind"] == "forget"]
        results["throughput"] = {"requests": n, "arrival_s": 30.0, "wall_s": wall, "subjects_per_hour": n / wall * 3600,
                                 "forget_jobs": len(forget_jobs)}

        # 3. manifest latency with and without 304
        def timed_gets(headers, k=1000):
            out = []
            for _ in range(k):
                t = time.perf_counter()
                r = c.get("/v1/models/digits/versions/latest", headers=headers)
                out.append((time.perf_counter() - t) * 1000)
            return out, r

        plain, r = timed_gets({})
        etag = r.headers["etag"]
        cached, r304 = timed_gets({"If-None-Match": etag})
        assert r304.status_code == 304 and r304.content == b""
        results["manifest_ms"] = {
            "200": {"p50": pct(plain, 0.5), "p99": pct(plain, 0.99)},
            "304": {"p50": pct(cached, 0.5), "p99": pct(cached, 0.99), "body_bytes": len(r304.content)},
        }
    finally:
        for p in running:
            p.kill()
    lines = [
        "# Pipeline benchmark", "", f"Command: `{results['command']}` (real uvicorn, Celery worker and beat, PostgreSQL, Redis; 2 shared cores).", "",
        "| measure | value |", "|---|---|",
        f"| request → clean version, batch window {results['latency']['batch_window_s']} s (median of 3) | {results['latency']['median_s']:.1f} s |",
        f"| steady load: {results['throughput']['requests']} requests over 30 s | done in {results['throughput']['wall_s']:.1f} s in {results['throughput']['forget_jobs']} forget jobs |",
        f"| subjects forgotten per hour (that run) | {results['throughput']['subjects_per_hour']:,.0f} |",
        f"| `latest` manifest 200: p50 / p99 | {results['manifest_ms']['200']['p50']:.2f} / {results['manifest_ms']['200']['p99']:.2f} ms |",
        f"| `latest` manifest 304: p50 / p99 (body {results['manifest_ms']['304']['body_bytes']} bytes) | {results['manifest_ms']['304']['p50']:.2f} / {results['manifest_ms']['304']['p99']:.2f} ms |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pipeline.json").write_text(json.dumps(results, indent=2))
    (OUT / "pipeline.md").write_text(text)


if __name__ == "__main__":
    main()
