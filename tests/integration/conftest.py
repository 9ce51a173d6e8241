from __future__ import annotations

import io
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
from sqlalchemy.orm import Session

import procs
from service.client.tokens import create_token
from service.models import Role

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    base: str
    token: str
    env: dict
    log_dir: object
    engine: object
    api: procs.Proc
    workers: list = field(default_factory=list)
    beat: procs.Proc | None = None
    storage: dict = field(default_factory=dict)

    @property
    def store(self):
        """The artifact store the processes use, seen from the test."""
        from service.core.config import StorageSettings
        from service.core.storage import make_store

        return make_store(StorageSettings(**self.storage))

    @property
    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.token}"}, timeout=60)

    def logs(self) -> str:
        out = [f"--- {self.api.name}\n{self.api.tail()}"]
        out += [f"--- {w.name}\n{w.tail()}" for w in self.workers]
        if self.beat:
            out.append(f"--- beat\n{self.beat.tail(20)}")
        return "\n".join(out)

    def start_worker(self, name: str = "worker", cwd=procs.ROOT, **env: str) -> procs.Proc:
        w = procs.worker({**self.env, **env}, self.log_dir, name, cwd).start()
        self.workers.append(w)
        return w


@pytest.fixture
def stack(request, clean_tables, database_url, tmp_path):
    """API, beat and one worker. Parametrise indirectly with "s3" to put every artifact in a
    (versioned) bucket of the session's S3 server instead of a local directory, or with
    ``{"backend": ..., "worker": False}`` to start the workers yourself."""
    engine = clean_tables
    procs.flush_redis()
    param = getattr(request, "param", "local")
    backend, start_worker = (param, True) if isinstance(param, str) else (param["backend"], param.get("worker", True))
    storage = {"backend": "local", "root": str(tmp_path / "artifacts")}
    extra = {}
    if backend == "s3":
        # The beat sweeps orphans every few seconds: a grace period keeps it off objects whose
        # rows are still being committed (as the production default of 600 s does).
        storage = {**request.getfixturevalue("s3_storage"), "delete_grace_s": 30}
        extra = procs.s3_env(storage)
    env = procs.env_for(database_url, tmp_path / "artifacts", **extra)
    port = procs.free_port()
    with Session(engine) as s, s.begin():
        _, token = create_token(s, Role.admin, "integration")
    st = Stack(base=f"http://127.0.0.1:{port}", token=token, env=env, log_dir=tmp_path, engine=engine,
               api=procs.api(env, tmp_path, port).start(), storage=storage)
    st.beat = procs.beat(env, tmp_path).start()
    if start_worker:
        st.start_worker()
    try:
        procs.wait_http(st.base)
        yield st
    finally:
        for p in [st.api, st.beat, *st.workers]:
            if p is not None:
                p.kill()
        procs.flush_redis()


def make_data(n_subjects=40, per_subject=6, d=16, classes=4, seed=0, n_core=200, n_eval=150):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, d)) * 1.5

    def draw(n):
        y = rng.integers(0, classes, size=n)
        return (means[y] + rng.normal(size=(n, d))).astype(np.float32), y.astype(np.int64)

    data = {"core": draw(n_core), "eval": draw(n_eval), "user": draw(n_subjects * per_subject)}
    data["subjects"] = [f"person-{i:03d}" for i in range(n_subjects) for _ in range(per_subject)]
    data["d"], data["classes"] = d, classes
    return data


def npz(x, y, subjects, split) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=x, labels=y, subject_ids=np.array(subjects), split=np.array(split))
    return buf.getvalue()


def register_and_ingest(c: httpx.Client, name: str, data: dict, *, hidden=(16,), linearize="last:1", method_config=None,
                        architecture="mlp", batch_window_s=3600) -> None:
    spec = {
        "name": name, "architecture": architecture,
        "architecture_config": {"in_features": data["d"], "hidden": list(hidden), "num_classes": data["classes"]},
        "input_shape": [data["d"]], "num_classes": data["classes"], "linearize": linearize, "batch_window_s": batch_window_s,
        "method_config": {"l2": 1e-3, "noise_std": 1e-3, "core_epochs": 10, "device": "cpu", "max_accuracy_drop": 0.5, **(method_config or {})},
    }
    r = c.post("/v1/models", json=spec)
    assert r.status_code == 201, r.text
    for split in ("core", "eval"):
        x, y = data[split]
        r = c.post(f"/v1/models/{name}/samples", content=npz(x, y, [f"{split}-{i}" for i in range(len(y))], split),
                   headers={"content-type": "application/x-npz"})
        assert r.status_code == 201, r.text
    x, y = data["user"]
    r = c.post(f"/v1/models/{name}/samples", content=npz(x, y, data["subjects"], "user"), headers={"content-type": "application/x-npz"})
    assert r.status_code == 201, r.text


def wait_job(stack: Stack, c: httpx.Client, job_id: str, timeout: float = 180) -> dict:
    def done():
        j = c.get(f"/v1/jobs/{job_id}").json()
        return j if j["status"] in ("succeeded", "failed", "cancelled") else None

    return procs.wait_for(done, timeout, f"job {job_id}", on_timeout=stack.logs)
