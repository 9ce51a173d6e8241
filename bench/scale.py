"""Scale-out benchmark (DESIGN §9 last target, §11).

1. Jobs per hour with one and with two Celery workers on the "gpu" queue, two models: real
   uvicorn + beat + a "default"-queue worker (housekeeping, as in compose) + N gpu workers on
   PostgreSQL/Redis, artifacts in an S3 server on loopback (moto's standalone server),
   the workers in different working directories with no shared artifact directory. Each model
   is driven by its own client thread: file a request, "forget now", wait for the job; repeat.
   One worker runs the two models' jobs one after the other; two run them side by side.
2. The time a forget job spends in the artifact store, local directory vs S3 server on loopback:
   the job run in-process (``run_job``) with every store call timed.

    .venv/bin/python bench/scale.py [--rounds 4] [--storage-samples 20000]

Writes bench/results/scale.{json,md} and prints the table. Needs PostgreSQL and Redis on loopback
and the dev extras (moto[server]).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "tests" / "workers" / "pipeline"))
import procs  # noqa: E402  (process helpers shared with the integration tests)
import s3_support  # noqa: E402  (the loopback S3 server of the test suite)

from service.core import migrate  # noqa: E402
from service.core.config import DatabaseSettings, Settings, StorageSettings  # noqa: E402
from service.core.db import make_engine, make_session_factory  # noqa: E402
from service.client.tokens import create_token  # noqa: E402
from service.models import Role  # noqa: E402

DB = f"lethe_bench_scale_{os.getpid()}"
URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}"
OUT = ROOT / "bench" / "results"


def npz(x, y, subjects, split) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=x, labels=y, subject_ids=np.array(subjects), split=np.array(split))
    return buf.getvalue()


def data(n_subjects=60, per_subject=5, d=16, classes=4, seed=0, prefix="p"):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, d)) * 1.5

    def draw(n):
        y = rng.integers(0, classes, size=n)
        return (means[y] + rng.normal(size=(n, d))).astype(np.float32), y.astype(np.int64)

    return {"core": draw(200), "eval": draw(150), "user": draw(n_subjects * per_subject),
            "subjects": [f"{prefix}-{i:03d}" for i in range(n_subjects) for _ in range(per_subject)], "d": d, "classes": classes}


def register(c: httpx.Client, name: str, dd: dict) -> None:
    spec = {"name": name, "architecture": "mlp",
            "architecture_config": {"in_features": dd["d"], "hidden": [32], "num_classes": dd["classes"]},
            "input_shape": [dd["d"]], "num_classes": dd["classes"], "linearize": "last:1", "batch_window_s": 3600,
            "method_config": {"l2": 1e-3, "noise_std": 1e-3, "core_epochs": 10, "device": "cpu", "max_accuracy_drop": 0.5}}
    assert c.post("/v1/models", json=spec).status_code == 201
    for split in ("core", "eval"):
        x, y = dd[split]
        r = c.post(f"/v1/models/{name}/samples", content=npz(x, y, [f"{split}-{i}" for i in range(len(y))], split),
                   headers={"content-type": "application/x-npz"})
        assert r.status_code == 201, r.text
    x, y = dd["user"]
    r = c.post(f"/v1/models/{name}/samples", content=npz(x, y, dd["subjects"], "user"), headers={"content-type": "application/x-npz"})
    assert r.status_code == 201, r.text


def wait_job(c: httpx.Client, job_id: str, timeout=300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = c.get(f"/v1/jobs/{job_id}").json()
        if j["status"] in ("succeeded", "failed", "cancelled"):
            return j
        time.sleep(0.2)
    raise TimeoutError(job_id)


def throughput(s3: s3_support.S3Server, workdir: Path, rounds: int) -> dict:
    storage = {"backend": "s3", "bucket": s3.new_bucket(versioned=True), "prefix": "bench", "endpoint_url": s3.endpoint,
               "region": "us-east-1", "addressing_style": "path"}
    # The production heartbeat settings: the tests' 4 s timeout would have the sweeper re-send a job
    # that merely waits behind another on the single worker, and each duplicate costs a job process.
    env = procs.env_for(URL, workdir / "unused", **procs.s3_env(storage),
                        LETHE_PIPELINE__HEARTBEAT_INTERVAL_S="5", LETHE_PIPELINE__HEARTBEAT_TIMEOUT_S="60")
    port = procs.free_port()
    engine = make_engine(DatabaseSettings(url=URL))
    with make_session_factory(engine).begin() as s:
        _, token = create_token(s, Role.admin, "bench")
    procs.flush_redis()
    api = procs.api(env, workdir, port).start()
    beat = procs.beat(env, workdir).start()
    workers: list[procs.Proc] = []

    def add_worker(name, queues="gpu"):
        home = workdir / name
        (home / "scratch").mkdir(parents=True, exist_ok=True)
        w = procs.worker({**env, "LETHE_STORAGE__SCRATCH_DIR": str(home / "scratch")}, workdir, name, home, queues).start()
        workers.append(w)
        deadline = time.monotonic() + 120
        while " ready." not in (w.log.read_text() if w.log.exists() else ""):
            if time.monotonic() > deadline:
                raise RuntimeError(w.tail())
            time.sleep(0.2)

    out: dict = {}
    try:
        procs.wait_http(f"http://127.0.0.1:{port}")
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=60)
        add_worker("housekeeping", "default")  # as in compose: scheduling, sweeps, purges off the gpu workers
        add_worker("w1")
        for n_workers in (1, 2):
            if n_workers == 2:
                add_worker("w2")
            names = [f"m{n_workers}a", f"m{n_workers}b"]
            dds = {m: data(prefix=m) for m in names}  # subjects of one model only
            for m in names:
                register(c, m, dds[m])
            trains = [c.post(f"/v1/models/{m}/train").json()["id"] for m in names]
            assert all(wait_job(c, j)["status"] == "succeeded" for j in trains)
            durations: list[float] = []
            errors: list[str] = []
            filing = threading.Lock()

            def drive(model: str) -> None:
                local = httpx.Client(base_url=c.base_url, headers=c.headers, timeout=60)
                for r in range(rounds):
                    subject = dds[model]["subjects"][5 * r]
                    with filing:  # two concurrent forget-now calls can complete each other's requests (see README)
                        r1 = local.post("/v1/deletion-requests", json={"subject_id": subject, "model": model})
                        r2 = local.post(f"/v1/models/{model}/forget-now")
                    if r2.status_code != 202:
                        errors.append(f"{model}: forget-now {r2.status_code} {r2.text} (request {r1.status_code} {r1.text})")
                        return
                    job = r2.json()["id"]
                    t = time.perf_counter()
                    j = wait_job(local, job)
                    durations.append(time.perf_counter() - t)
                    if j["status"] != "succeeded":
                        errors.append(f"{model}: {j['status']} {j.get('error')}")

            t0 = time.perf_counter()
            threads = [threading.Thread(target=drive, args=(m,), daemon=True) for m in names]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            if errors:
                raise RuntimeError("; ".join(errors))
            jobs = 2 * rounds
            out[f"workers_{n_workers}"] = {"jobs": jobs, "wall_s": wall, "jobs_per_hour": jobs / wall * 3600,
                                           "mean_job_latency_s": float(np.mean(durations))}
        out["speedup"] = out["workers_2"]["jobs_per_hour"] / out["workers_1"]["jobs_per_hour"]
    finally:
        for p in [api, beat, *workers]:
            p.kill()
        engine.dispose()
    return out


class TimedStore:
    """Delegates to a store, adding the wall time of every call to ``seconds``."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                res = attr(*a, **kw)
                if name == "open":  # a streaming reader: time its reads too
                    return _TimedReader(res, self)
                if name == "iter_range":
                    return list(res)
                return res
            finally:
                self.seconds += time.perf_counter() - t
                self.calls += 1

        return timed


class _TimedReader:
    def __init__(self, inner, owner) -> None:
        self.inner, self.owner = inner, owner

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in ("read", "verify"):
            return attr

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return attr(*a, **kw)
            finally:
                self.owner.seconds += time.perf_counter() - t

        return timed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.inner.close()


def storage_time(s3: s3_support.S3Server, workdir: Path, n_samples: int) -> dict:
    from pipeline_support import file_request, ingest, register_model

    from service.job import service as job_service
    from service.models import JobKind, Model
    from workers.execution.run import run_job
    from workers.runtime import Runtime

    out = {}
    base = Settings(environment="test", database={"url": URL}, broker={"url": procs.REDIS_URL},
                    security={"secret_key": procs.SECRET}, jobs={"isolate": False})
    backends = {
        "local": StorageSettings(root=workdir / "local-artifacts"),
        "s3": StorageSettings(backend="s3", bucket=s3.new_bucket(versioned=True), prefix="bench", endpoint_url=s3.endpoint,
                              region="us-east-1", addressing_style="path"),
    }
    rng = np.random.default_rng(1)
    d, classes = 64, 10
    means = rng.normal(size=(classes, d))
    y = rng.integers(0, classes, size=n_samples)
    x = (means[y] + rng.normal(size=(n_samples, d))).astype(np.float32)
    per = 10
    subjects = [f"s-{i // per:05d}" for i in range(n_samples)]
    for name, st in backends.items():
        rt = Runtime.from_settings(base.model_copy(update={"storage": st}))
        with rt.session_factory.begin() as s:
            m = register_model(s, f"store-{name}", d=d, classes=classes)
            m.architecture_config = {"in_features": d, "hidden": [64], "num_classes": classes}
            ingest(s, rt.store, m, x[:2000], y[:2000], [f"c{i}" for i in range(2000)], "core")
            ingest(s, rt.store, m, x[2000:3000], y[2000:3000], [f"e{i}" for i in range(1000)], "eval")
            ingest(s, rt.store, m, x[3000:], y[3000:], subjects[3000:], "user")
            job = job_service.create_job(s, rt.settings, m, JobKind.train, actor="bench")
            job_id, model_id = job.id, m.id
        assert run_job(rt, job_id) == "succeeded"
        with rt.session_factory.begin() as s:
            model = s.get(Model, model_id)
            for k in range(5):
                file_request(s, model, subjects[3000 + per * k])
            job_id = job_service.forget_now(s, rt.settings, model, "bench").id
        timed = TimedStore(rt.store)
        rt.store = timed  # type: ignore[assignment]
        t0 = time.perf_counter()
        assert run_job(rt, job_id) == "succeeded"
        total = time.perf_counter() - t0
        out[name] = {"forget_s": total, "storage_s": timed.seconds, "storage_calls": timed.calls,
                     "storage_share": timed.seconds / total}
        rt.engine.dispose()
    out["samples"] = n_samples
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4, help="forget jobs per model in the throughput run")
    ap.add_argument("--storage-samples", type=int, default=20000)
    args = ap.parse_args()
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB}"')
    migrate.upgrade(URL)
    os.environ.update(s3_support.AWS_ENV)
    load_before = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory(prefix="lethe-bench-scale-") as tmp:
            work = Path(tmp)
            s3 = s3_support.start_server(work / "moto.log")
            try:
                storage = storage_time(s3, work, args.storage_samples)
                scale = throughput(s3, work, args.rounds)
            finally:
                s3.stop()
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    result = {"scale": scale, "storage": storage, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
              "loadavg_before": load_before, "loadavg_after": os.getloadavg()}, "args": vars(args)}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "scale.json").write_text(json.dumps(result, indent=2))
    w1, w2 = scale["workers_1"], scale["workers_2"]
    lines = [
        "| measure | value |",
        "|---|---|",
        f"| forget jobs/hour, 1 worker, 2 models | {w1['jobs_per_hour']:.0f} ({w1['jobs']} jobs in {w1['wall_s']:.1f} s) |",
        f"| forget jobs/hour, 2 workers, 2 models | {w2['jobs_per_hour']:.0f} ({w2['jobs']} jobs in {w2['wall_s']:.1f} s) |",
        f"| speed-up (target ≥ 1.7×) | {scale['speedup']:.2f}× |",
        f"| forget job, local store: storage time / job time | {storage['local']['storage_s']:.3f} s / {storage['local']['forget_s']:.2f} s ({100 * storage['local']['storage_share']:.1f}%) |",
        f"| forget job, S3 on loopback: storage time / job time | {storage['s3']['storage_s']:.3f} s / {storage['s3']['forget_s']:.2f} s ({100 * storage['s3']['storage_share']:.1f}%) |",
        f"| machine | {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before / {result['machine']['loadavg_after'][0]:.1f} after |",
    ]
    table = "\n".join(lines)
    (OUT / "scale.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
