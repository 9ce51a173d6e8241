"""Scale-out (DESIGN §11): two Celery workers that share nothing but PostgreSQL, Redis and the
object store (different working directories, different scratch dirs, no artifact directory),
two models; their jobs run in parallel, one per worker; every artifact round-trips through the
S3 server; a SIGKILLed worker's job is finished by the other."""

from __future__ import annotations

import hashlib
import re
import signal
from datetime import datetime

import pytest
from conftest import make_data, register_and_ingest, wait_job
from sqlalchemy import select
from sqlalchemy.orm import Session

import procs
from service.models import Job, ModelVersion, SampleChunk
from workers.client import LetheClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _holder(stack, job_id: str) -> list[str]:
    """Names of the workers whose log says they received the job's task (the task id is the job id)."""
    return [w.name for w in stack.workers if f"[{job_id}] received" in (w.log.read_text() if w.log.exists() else "")]


_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): .*Task job\.run\[([0-9a-f-]+)\] (received|succeeded)")


def _window(stack, job_id: str) -> tuple[datetime, datetime]:
    """When the worker that ran the job's task received it and when the task (job process
    included) ended, from the worker's log."""
    seen: dict[str, datetime] = {}
    for w in stack.workers:
        for line in w.log.read_text().splitlines():
            m = _LINE.match(line)
            if m and m.group(2) == job_id:
                seen.setdefault(m.group(3), datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"))
    return seen.get("received"), seen.get("succeeded")


def _overlap(stack, a: str, b: str) -> bool:
    (s1, e1), (s2, e2) = _window(stack, a), _window(stack, b)
    return s1 < e2 and s2 < e1


@pytest.mark.parametrize("stack", [{"backend": "s3", "worker": False}], indirect=True)
def test_two_workers_share_only_db_broker_and_object_store(stack, tmp_path):
    for name in ("w1", "w2"):
        home = tmp_path / name
        (home / "scratch").mkdir(parents=True)
        # no artifact directory: LETHE_STORAGE__ROOT points at a path that does not exist
        stack.start_worker(name, cwd=home, LETHE_STORAGE__SCRATCH_DIR=str(home / "scratch"),
                           LETHE_STORAGE__ROOT=str(home / "no-such-dir"))
    for w in stack.workers:
        procs.wait_for(lambda w=w: " ready." in w.log.read_text() if w.log.exists() else False, 90, f"{w.name} ready",
                       on_timeout=stack.logs)
    c = stack.http
    data = make_data(n_subjects=20, per_subject=5)
    for m in ("alpha", "beta"):
        register_and_ingest(c, m, data, hidden=(32,))

    def run_pair(start) -> None:
        ids = [start(m) for m in ("alpha", "beta")]
        for i in ids:
            assert wait_job(stack, c, i, 240)["status"] == "succeeded", stack.logs()
        holders = [_holder(stack, i) for i in ids]
        assert sorted(h[0] for h in holders) == ["w1", "w2"] and all(len(h) == 1 for h in holders), holders
        procs.wait_for(lambda: all(all(_window(stack, i)) for i in ids), 30, "the tasks' log lines", on_timeout=stack.logs)
        assert _overlap(stack, *ids), [_window(stack, i) for i in ids]  # in parallel

    run_pair(lambda m: c.post(f"/v1/models/{m}/train").json()["id"])

    def forget(m):
        for subj in ("person-001", "person-007"):
            assert c.post("/v1/deletion-requests", json={"subject_id": subj, "model": m}).status_code == 202
        r = c.post(f"/v1/models/{m}/forget-now")
        assert r.status_code == 202, r.text
        return r.json()["id"]

    run_pair(forget)

    # every artifact is an object in the bucket and verifies; the workers' directories hold none
    store = stack.store
    with Session(stack.engine) as s:
        live = s.execute(select(ModelVersion).where(ModelVersion.state == "live")).scalars().all()
        assert len(live) == 2
        for v in live:
            assert v.artifact_uri.startswith("s3://") and v.private_uri.startswith("s3://")
            store.verify(v.artifact_uri, v.sha256, v.size_bytes)
            store.verify(v.private_uri, store_digest(v.private_uri))
        assert all(u.startswith("s3://") for u in s.execute(select(SampleChunk.uri)).scalars())
    for name in ("w1", "w2"):
        assert not (tmp_path / name / "no-such-dir").exists()
        assert list((tmp_path / name / "scratch").iterdir()) == []
    pulled = LetheClient(stack.base, stack.token).pull("beta", tmp_path / "served")  # streamed through the API
    assert hashlib.sha256(pulled.path.read_bytes()).hexdigest() == pulled.manifest["sha256"]

    # a worker SIGKILLed mid-job (a network that takes seconds to build): the other one finishes it
    register_and_ingest(c, "gamma", data, architecture="slow_network:build")
    job_id = c.post("/v1/models/gamma/train").json()["id"]

    def running_holder():
        with Session(stack.engine) as s:
            j = s.get(Job, job_id)
            if j.status != "running":
                return None
        # the worker running it: received the task and not yet finished it (a duplicate delivery
        # to the other worker is received too, and ends at once as 'skipped')
        done = {w.name for w in stack.workers if f"[{job_id}] succeeded" in (w.log.read_text() if w.log.exists() else "")}
        h = [name for name in _holder(stack, job_id) if name not in done]
        return h[0] if len(h) == 1 else None

    victim_name = procs.wait_for(running_holder, 120, "the job to be running on a worker", interval=0.05, on_timeout=stack.logs)
    victim = next(w for w in stack.workers if w.name == victim_name)
    victim.kill(signal.SIGKILL)
    survivor = next(w for w in stack.workers if w.name != victim_name)
    done = wait_job(stack, c, job_id, 120)
    assert done["status"] == "succeeded", stack.logs()
    assert survivor.name in _holder(stack, job_id)
    with Session(stack.engine) as s:
        assert s.get(Job, job_id).attempts == 2


def store_digest(uri: str) -> str:
    from service.core.storage import digest_of

    d = digest_of(uri)
    assert d is not None
    return d
