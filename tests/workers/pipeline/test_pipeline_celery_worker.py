"""ONE real Celery worker through Redis: a train job sent by the outbox relay runs end to end.

The worker is a subprocess (``celery -A workers.celery_app worker --pool solo``) configured only
by ``LETHE_*`` environment variables, against this run's PostgreSQL database and Redis DB 15. Its
queues get a unique suffix (the relay's sender maps ``gpu``/``default`` onto them), so workers
of other test runs on the same Redis database never take this test's messages.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from pipeline_support import load_all, make_data, register_model
from sqlalchemy import select

from service.job import service as job_service
from service.models import Job, JobKind, ModelVersion
from workers.celery_app import make_celery
from workers.relay import relay_outbox

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


def test_celery_worker_runs_a_train_job_end_to_end(rt, settings, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    queues = {"gpu": f"gpu-{suffix}", "default": f"default-{suffix}"}
    data = make_data()
    with rt.session_factory.begin() as s:
        m = register_model(s, "tiny")
        load_all(s, rt.store, m, data)
        job_id = job_service.create_job(s, rt.settings, m, JobKind.train, actor="test").id

    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update(
        LETHE_ENVIRONMENT="test",
        LETHE_DATABASE__URL=settings.database.url,
        LETHE_BROKER__URL=settings.broker.url,
        LETHE_STORAGE__ROOT=str(settings.storage.root),
        LETHE_SECURITY__SECRET_KEY=settings.security.secret_key,
        LETHE_PIPELINE__HEARTBEAT_INTERVAL_S="0.5",
        PYTHONPATH=str(ROOT),
    )
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", ",".join(queues.values()),
             "--pool", "solo", "--concurrency", "1", "-n", f"pipeline-{suffix}@%h", "--without-mingle", "--without-gossip",
             "--without-heartbeat", "--loglevel", "INFO"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    app = make_celery(settings)
    try:
        def send(name, args=None, task_id=None, queue=None):
            return app.send_task(name, args=args, task_id=task_id, queue=queues[queue])

        assert relay_outbox(rt.session_factory, send) == 1
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and worker.poll() is None:
            with rt.session_factory() as s:
                status = s.get(Job, job_id).status
            if status in ("succeeded", "failed"):
                break
            time.sleep(0.3)
        assert status == "succeeded", f"job is {status}\n{log.read_text()[-4000:]}"
        with rt.session_factory() as s:
            job = s.get(Job, job_id)
            v = s.execute(select(ModelVersion).where(ModelVersion.job_id == job_id)).scalar_one()
            assert job.attempts == 1 and job.heartbeat_at is not None and job.result_version_id == v.id
            assert v.number == 1 and v.metrics["eval_accuracy"] > 0.5
            assert hashlib.sha256(rt.store.read_bytes(v.artifact_uri)).hexdigest() == v.sha256
            assert rt.store.exists(v.private_uri)
        assert f"Task job.run[{job_id}]" in log.read_text()  # the task id is the job id
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=10)
        r = redis.Redis.from_url(settings.broker.url)
        r.delete(*queues.values())
        r.close()
        app.close()
