"""Faults with real processes: nothing accepted is lost, nothing is done twice."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import httpx
import pytest
from conftest import make_data, register_and_ingest, wait_job
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import procs
from service.models import AuditEvent, DeletionRequest, Job, ModelVersion

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _file(c, model, subjects):
    ids = []
    for s in subjects:
        r = c.post("/v1/deletion-requests", json={"subject_id": s, "model": model})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


def _all_completed(c, ids):
    return all(c.get(f"/v1/deletion-requests/{i}").json()["status"] == "completed" for i in ids)


def _completed_events(engine, ids) -> dict[str, int]:
    with Session(engine) as s:
        events = s.execute(select(AuditEvent.payload).where(AuditEvent.kind == "request.completed")).scalars().all()
    return {i: sum(1 for e in events if e.get("request_id") == i) for i in ids}


def test_worker_sigkill_mid_solve_resumes_and_publishes_once(stack):
    c = stack.http
    data = make_data(n_subjects=40, per_subject=25, d=32)
    register_and_ingest(c, "slow", data, hidden=(192,), linearize="all", method_config={"tol": 1e-10, "core_epochs": 5})
    assert wait_job(stack, c, c.post("/v1/models/slow/train").json()["id"], 300)["status"] == "succeeded", stack.logs()
    ids = _file(c, "slow", [f"person-{i:03d}" for i in range(5)])
    job_id = c.post("/v1/models/slow/forget-now").json()["id"]

    def solving():
        with Session(stack.engine) as s:
            j = s.get(Job, job_id)
            return j.status == "running" and j.step == "collect" and (j.progress or {}).get("phase") == "solve"

    procs.wait_for(solving, 120, "the forget job to be mid-solve", interval=0.05, on_timeout=stack.logs)
    stack.workers[0].kill(signal.SIGKILL)
    with Session(stack.engine) as s:
        j = s.get(Job, job_id)
        assert j.status == "running" and j.attempts == 1 and j.step == "collect"
    stack.start_worker("worker2")
    procs.wait_for(lambda: _all_completed(c, ids), 240, "requests to complete after the crash", on_timeout=stack.logs)
    with Session(stack.engine) as s:
        j = s.get(Job, job_id)
        assert j.status == "succeeded" and j.attempts == 2
        assert s.execute(select(func.count()).select_from(ModelVersion)).scalar_one() == 2  # train + one forget
    assert set(_completed_events(stack.engine, ids).values()) == {1}


def test_job_that_always_kills_its_worker_ends_failed(stack):
    c = stack.http
    data = make_data(n_subjects=5, per_subject=2)
    register_and_ingest(c, "crashy", data, architecture="crashing_network:build")
    (rid,) = _file(c, "crashy", ["person-001"])
    job_id = c.post("/v1/models/crashy/forget-now").json()["id"]
    stop = threading.Event()

    def supervisor():  # what compose's "restart: unless-stopped" does
        n = 0
        while not stop.is_set() and n < 6:
            w = stack.workers[-1]
            if not w.alive():
                n += 1
                stack.start_worker(f"worker-r{n}")
            time.sleep(0.5)

    t = threading.Thread(target=supervisor, daemon=True)
    t.start()
    try:
        job = wait_job(stack, c, job_id, 240)
    finally:
        stop.set()
        t.join()
    assert job["status"] == "failed" and job["attempts"] == job["max_attempts"] == 3, job
    assert "worker" in job["error"]
    req = c.get(f"/v1/deletion-requests/{rid}").json()
    assert req["status"] == "queued" and req["attempts"] == 1 and req["job_id"] is None  # visible, not stuck
    assert c.get("/v1/models/crashy/versions").json()["items"] == []


def _restart_redis() -> None:
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"], check=False, capture_output=True)
    time.sleep(0.5)
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379", "--save", "", "--appendonly", "no"], check=True)
    procs.wait_for(lambda: subprocess.run(["redis-cli", "-p", "6379", "ping"], capture_output=True).returncode == 0, 20, "redis")


def test_redis_restart_loses_nothing(stack):
    c = stack.http
    data = make_data()
    register_and_ingest(c, "r", data)
    assert wait_job(stack, c, c.post("/v1/models/r/train").json()["id"])["status"] == "succeeded", stack.logs()
    stack.workers[0].kill()
    ids = _file(c, "r", [f"person-{i:03d}" for i in (1, 2, 3)])
    job_id = c.post("/v1/models/r/forget-now").json()["id"]
    time.sleep(1.5)  # beat relays the job to Redis, where nobody consumes it
    _restart_redis()  # ...and the queued message is gone with Redis's memory
    stack.start_worker("worker-after-restart")
    procs.wait_for(lambda: _all_completed(c, ids), 180, "requests after the Redis restart", on_timeout=stack.logs)
    assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
    assert set(_completed_events(stack.engine, ids).values()) == {1}


def test_api_killed_during_a_burst_keeps_every_202(stack):
    accepted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n):
        with httpx.Client(base_url=stack.base, headers={"Authorization": f"Bearer {stack.token}"}, timeout=5) as c:
            i = 0
            while not stop.is_set():
                try:
                    r = c.post("/v1/deletion-requests", json={"subject_id": f"burst-{n}-{i}"})
                except httpx.HTTPError:
                    return
                if r.status_code == 202:
                    with lock:
                        accepted.append(r.json()["id"])
                i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    procs.wait_for(lambda: len(accepted) >= 150, 60, "a burst of accepted requests", interval=0.02)
    stack.api.kill(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join()
    port = stack.base.rsplit(":", 1)[1]
    stack.api = procs.api(stack.env, stack.log_dir, int(port)).start()
    procs.wait_http(stack.base)
    with Session(stack.engine) as s:
        stored = {str(i) for i in s.execute(select(DeletionRequest.id)).scalars()}
    assert set(accepted) <= stored, f"{len(set(accepted) - stored)} accepted requests were lost"
    c = stack.http
    for rid in accepted[-5:]:
        assert c.get(f"/v1/deletion-requests/{rid}").status_code == 200
