"""The Celery application: queues ``default`` and ``gpu``, routes by task name.

The database is the only source of truth: results are ignored, task arguments are ids, the task
id is the job id, and every task re-reads its row before acting. ``acks_late`` +
``reject_on_worker_lost`` + prefetch 1 mean a task whose worker dies is redelivered; the Redis
visibility timeout is above the longest job, and the sweeper re-sends jobs whose heartbeat
stopped long before that.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from service.core.config import Settings, get_settings

ROUTES = {
    "job.run": {"queue": "gpu"},
    "pipeline.schedule": {"queue": "default"},
    "pipeline.relay": {"queue": "default"},
    "pipeline.sweep": {"queue": "default"},
    "pipeline.purge": {"queue": "default"},
    "audit.checkpoint": {"queue": "default"},
    "webhook.deliver": {"queue": "default"},
}


def make_celery(settings: Settings) -> Celery:
    app = Celery("lethe", broker=settings.broker.url, include=["workers.tasks.pipeline"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        task_default_queue="default",
        task_queues=(Queue("default"), Queue("gpu")),
        task_routes=ROUTES,
        broker_transport_options={"visibility_timeout": settings.broker.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "schedule": {"task": "pipeline.schedule", "schedule": settings.pipeline.scheduler_interval_s},
            "relay": {"task": "pipeline.relay", "schedule": settings.pipeline.outbox_interval_s},
            "sweep": {"task": "pipeline.sweep", "schedule": settings.pipeline.sweeper_interval_s},
            "audit-checkpoint": {"task": "audit.checkpoint", "schedule": settings.audit.checkpoint_interval_s},
            "webhooks": {"task": "webhook.deliver", "schedule": settings.webhooks.interval_s},
        },
    )
    app.lethe_settings = settings
    return app


app = make_celery(get_settings())
