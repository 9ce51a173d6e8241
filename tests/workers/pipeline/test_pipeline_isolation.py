"""Jobs run in a process of their own under a memory cap (DESIGN §10, issue 8): a job that
allocates past the cap ends ``failed`` at once, without retries, with an error naming the cap,
its requests go back to the queue, and the API in the parent process keeps answering.

Real child processes (``python -m workers.execution.isolation``) on the real test database."""

from __future__ import annotations

import os
import resource
import threading
import time
import uuid

import pytest
from pipeline_support import file_request, load_all, make_data, register_model
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.job import service as job_service
from service.models import DeletionRequest, Job, JobKind, ModelVersion
from workers.execution.isolation import run_isolated

pytestmark = pytest.mark.slow

NETS = '''
import os
import time

import torch
from torch import nn


def _small(in_features, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))


def hog(in_features=8, num_classes=3, gib=3):
    """Grows by 64 MiB blocks to ``gib`` GiB (really touched) when built for a job."""
    if torch.empty(0).device.type != "meta":
        blocks = []
        for _ in range(gib * 16):
            blocks.append(torch.ones(16 << 20))
            time.sleep(0.02)
    return _small(in_features, num_classes)


def crash(in_features=8, num_classes=3):
    if torch.empty(0).device.type != "meta":
        os._exit(137)
    return _small(in_features, num_classes)
'''


@pytest.fixture
def nets(tmp_path, monkeypatch, settings):
    """Architectures the administrator declared (a module on the children's PYTHONPATH)."""
    d = tmp_path / "nets"
    d.mkdir()
    (d / "lethe_job_nets.py").write_text(NETS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(d), os.getcwd()]))
    settings.architectures.declared = {"hog": "lethe_job_nets:hog", "crash": "lethe_job_nets:crash"}
    settings.jobs.memory_limit_mb = 1024
    settings.jobs.watchdog_interval_s = 0.05
    return settings


def _forget_job(rt, architecture: str, device: str = "cpu", subjects=("subject-001", "subject-002")):
    data = make_data(n_subjects=6, per_subject=3)
    with rt.session_factory.begin() as s:
        arch_config = None if architecture == "mlp" else {"in_features": 8, "num_classes": 3}
        m = register_model(s, name="m-" + architecture, architecture=architecture,
                           **({"architecture_config": arch_config} if arch_config else {}))
        m.method_config = {**m.method_config, "device": device}
        load_all(s, rt.store, m, data)
        reqs = [file_request(s, m, subj) for subj in subjects]
        job = job_service.create_job(s, rt.settings, m, JobKind.forget, actor="test", request_ids=[r.id for r in reqs])
        return job.id, m.name, [r.id for r in reqs]


def _state(rt, job_id: uuid.UUID, req_ids):
    with Session(rt.engine) as s:
        job = s.get(Job, job_id)
        reqs = [s.get(DeletionRequest, r) for r in req_ids]
        versions = s.execute(select(func.count()).select_from(ModelVersion)).scalar_one()
        return job, reqs, versions


def _reading_while(client, model_name: str, work):
    """Run ``work`` in a thread (as the embedded worker does) while the API is read in a loop."""
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("status", work()))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    t.start()
    codes = []
    while t.is_alive():
        codes.append(client.get(f"/v1/models/{model_name}", headers=client.auth("operator")).status_code)
        codes.append(client.get("/healthz").status_code)
        time.sleep(0.05)
    t.join()
    out["seconds"] = time.monotonic() - t0
    out["codes"] = codes
    out["parent_rss_growth_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    return out


@pytest.mark.parametrize("enforcement,words", [
    ("auto", "needed more than its memory cap of 1024 MiB (LETHE_JOBS__MEMORY_LIMIT_MB)"),  # RLIMIT_AS in the child
    ("rss", "past its memory cap of 1024 MiB (LETHE_JOBS__MEMORY_LIMIT_MB), and was stopped"),  # the parent's watchdog
])
def test_a_job_past_the_memory_cap_fails_at_once_and_the_api_keeps_answering(rt, committed_app, nets, enforcement, words):
    nets.jobs.memory_enforcement = enforcement
    job_id, name, req_ids = _forget_job(rt, "hog")
    out = _reading_while(committed_app, name, lambda: run_isolated(rt, job_id))
    assert out["status"] == "failed"
    job, reqs, versions = _state(rt, job_id, req_ids)
    assert job.status == "failed" and job.attempts == 1, (job.status, job.attempts, job.error)  # no retry
    assert words in job.error and "out of memory" in job.error
    assert [r.status for r in reqs] == ["queued", "queued"] and all(r.job_id is None for r in reqs)  # back to the queue
    assert versions == 0
    # the API (this process) answered all along, and the 3 GiB never came into it
    assert out["codes"] and set(out["codes"]) == {200}, out["codes"]
    assert out["parent_rss_growth_kib"] < 512 * 1024
    with Session(rt.engine) as s:
        assert s.get(Job, job_id).finished_at is not None
    # the problem is visible through the API as well
    body = committed_app.get(f"/v1/jobs/{job_id}", headers=committed_app.auth("operator")).json()
    assert body["status"] == "failed" and "memory cap" in body["error"]


def test_a_crashing_job_process_is_a_failed_attempt_retried_while_attempts_remain(rt, nets):
    job_id, _, req_ids = _forget_job(rt, "crash")
    assert run_isolated(rt, job_id) == "retrying"
    job, reqs, _ = _state(rt, job_id, req_ids)
    assert job.status == "queued" and job.attempts == 1 and "exited with status 137" in job.error
    assert [r.status for r in reqs] == ["processing", "processing"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a worker without CUDA")
def test_a_device_the_worker_does_not_have_fails_the_job_at_once(rt, nets):
    job_id, _, req_ids = _forget_job(rt, "mlp", device="cuda")
    t0 = time.monotonic()
    assert run_isolated(rt, job_id) == "failed"
    job, reqs, versions = _state(rt, job_id, req_ids)
    assert job.status == "failed" and job.attempts == 1 and "no CUDA device" in job.error
    assert [r.status for r in reqs] == ["queued", "queued"] and versions == 0
    assert time.monotonic() - t0 < 120


def test_an_isolated_job_succeeds_like_an_inline_one(rt, nets):
    job_id, _, req_ids = _forget_job(rt, "mlp")
    assert run_isolated(rt, job_id) == "succeeded"
    job, reqs, versions = _state(rt, job_id, req_ids)
    assert job.status == "succeeded" and job.attempts == 1 and versions == 1
    assert {r.status for r in reqs} == {"completed"}


def test_a_legacy_import_path_that_is_not_declared_fails_the_job_and_is_never_imported(rt, nets, tmp_path):
    """A row written before the registry (``module:function``) runs only if an administrator
    declared that string; otherwise the job fails at once, clearly, and nothing is imported."""
    marker = tmp_path / "imported.txt"
    (tmp_path / "nets" / "lethe_legacy_net.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    job_id, _, req_ids = _forget_job(rt, "lethe_legacy_net:build")
    assert run_isolated(rt, job_id) == "failed"
    job, reqs, versions = _state(rt, job_id, req_ids)
    assert job.status == "failed" and job.attempts == 1
    assert "architecture 'lethe_legacy_net:build' is not registered here" in job.error
    assert not marker.exists() and versions == 0
    assert [r.status for r in reqs] == ["queued", "queued"]


def test_a_duplicate_delivery_starts_no_process(rt, nets, monkeypatch):
    """A finished job, and one a live worker holds (fresh heartbeat), are skipped before any child
    process starts (a child costs a Python + torch start-up and memory)."""
    import subprocess

    from sqlalchemy import update

    from service.models import Job
    from service.models._types import utcnow

    job_id, _, _ = _forget_job(rt, "mlp")
    assert run_isolated(rt, job_id) == "succeeded"
    started = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a) or real_popen(*a, **k))
    assert run_isolated(rt, job_id) == "skipped"
    # held by a live worker: running with a fresh heartbeat
    with rt.session_factory.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="running", heartbeat_at=utcnow()))
    assert run_isolated(rt, job_id) == "skipped"
    assert started == []


def test_the_next_job_runs_in_the_process_started_ahead(rt, nets):
    """jobs.warm_process: while a job runs, the next job's process starts and imports; the next job
    runs in it (and succeeds), and another one is started for the job after. A spare started with
    another environment is not used: it is replaced."""
    from service.models import Model
    from workers.execution import isolation

    job_id, name, _ = _forget_job(rt, "mlp", subjects=("subject-001",))
    assert run_isolated(rt, job_id) == "succeeded"
    env, spare = isolation._spare
    assert spare.poll() is None  # alive, waiting for a job on its stdin
    with rt.session_factory.begin() as s:
        m = s.execute(select(Model).where(Model.name == name)).scalar_one()
        req = file_request(s, m, "subject-002")
        second = job_service.create_job(s, rt.settings, m, JobKind.forget, actor="test", request_ids=[req.id]).id
    assert run_isolated(rt, second) == "succeeded"
    assert spare.wait(timeout=30) == 0  # it ran the second job and exited
    job, reqs, versions = _state(rt, second, [req.id])
    assert job.status == "succeeded" and reqs[0].status == "completed" and versions == 2
    _, fresh = isolation._spare
    assert fresh.pid != spare.pid and fresh.poll() is None
    other = isolation._job_process({**env, "LETHE_SPARE_TEST": "1"})  # another environment: a new process
    try:
        assert other is not fresh and fresh.wait(timeout=30) != 0  # the unusable spare was stopped
    finally:
        other.kill()
        other.wait()
