"""Thin Celery tasks: open the runtime, call one function, relay the outbox. Arguments are ids.

| task               | queue   | function                                        |
|--------------------|---------|-------------------------------------------------|
| ``job.run``        | gpu     | ``workers.execution.isolation.run_isolated(rt, job_id)`` (a child process running ``run_job``) |
| ``pipeline.schedule`` | default | ``service.job.service.schedule(session, settings)`` |
| ``pipeline.relay`` | default | ``workers.relay.relay_outbox(session_factory, send)`` |
| ``pipeline.sweep`` | default | ``workers.execution.sweeper.sweep(rt)``         |
| ``pipeline.purge`` | default | ``workers.execution.purge.purge_model(rt, model_id)`` |
| ``audit.checkpoint`` | default | ``service.audit.service.sign_checkpoint(session, only_if_new=True)`` |

The functions take a :class:`workers.runtime.Runtime` (settings, engine, session factory, artifact
store) and re-read the database; results are ignored (the database is the truth). ``job.run``
never raises for a job's own failure: the job row records it and, when attempts remain, the
re-send goes through the outbox that this task relays before it returns.
"""

from __future__ import annotations

from celery import shared_task

from service.job import service as job_service
from workers.runtime import runtime_for


@shared_task(name="job.run", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job_task(self, job_id: str) -> str:
    rt = runtime_for(self.app)
    if rt.settings.jobs.isolate:  # a process of its own, under the memory cap (no torch here)
        from workers.execution.isolation import run_isolated

        status = run_isolated(rt, job_id)
    else:
        from workers.execution.isolation import install_declared
        from workers.execution.run import run_job

        install_declared(rt.settings)
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


@shared_task(name="audit.checkpoint", bind=True)
def audit_checkpoint_task(self) -> int | None:
    """The periodic tick: sign the chain's head when events were added since the last checkpoint."""
    from service.audit.service import sign_checkpoint

    rt = runtime_for(self.app)
    with rt.session_factory.begin() as session:
        cp = sign_checkpoint(session, only_if_new=True)
        return None if cp is None else int(cp.seq)


@shared_task(name="webhook.deliver", bind=True)
def deliver_webhooks_task(self) -> int:
    """Fan out new webhook events and send the deliveries that are due (a round; beat repeats it)."""
    from service.webhook.delivery import run_once

    rt = runtime_for(self.app)
    return run_once(rt.session_factory, rt.settings)


@shared_task(name="pipeline.purge", bind=True, acks_late=True)
def purge_task(self, model_id: int) -> dict:
    from workers.execution.purge import purge_model

    return purge_model(runtime_for(self.app), int(model_id))


def relay(app) -> int:
    from workers.relay import relay_outbox

    return relay_outbox(runtime_for(app).session_factory, app.send_task)
