"""Thin Celery tasks: open the runtime, call one function. Arguments are ids."""

from __future__ import annotations

from celery import shared_task

from service.job import service as job_service
from workers.runtime import runtime_for


@shared_task(name="job.run", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job_task(self, job_id: str) -> str:
    from workers.execution.run import run_job

    rt = runtime_for(self.app)
    status = run_job(rt, job_id)
    relay(self.app)
    return status


@shared_task(name="pipeline.schedule", bind=True)
def schedule_task(self) -> int:
    rt = runtime_for(self.app)
    with rt.session_factory.begin() as session:
        n = len(job_service.schedule(session, rt.settings))
    relay(self.app)
    return n


@shared_task(name="pipeline.relay", bind=True)
def relay_task(self) -> int:
    return relay(self.app)


@shared_task(name="pipeline.sweep", bind=True)
def sweep_task(self) -> dict:
    from workers.execution.sweeper import sweep

    out = sweep(runtime_for(self.app))
    relay(self.app)
    return out


@shared_task(name="pipeline.purge", bind=True, acks_late=True)
def purge_task(self, model_id: int) -> dict:
    from workers.execution.purge import purge_model

    return purge_model(runtime_for(self.app), int(model_id))


def relay(app) -> int:
    from workers.relay import relay_outbox

    return relay_outbox(runtime_for(app).session_factory, app.send_task)
