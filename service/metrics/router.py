"""Prometheus metrics. Gauges are computed from the database at scrape time (the database is
the only source of truth), counters and histograms are kept in-process."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from service.core.db import read_session
from service.client.tokens import authenticate, require
from service.models import OPEN_REQUEST_STATUSES, DeletionRequest, Job, Model, ModelVersion, Role
from service.models._types import utcnow

router = APIRouter(tags=["health"])


class DatabaseCollector:
    def __init__(self, session_factory) -> None:
        self.session_factory = session_factory

    def collect(self):
        with read_session(self.session_factory) as session:
            by_status = GaugeMetricFamily(
                "lethe_deletion_requests", "Deletion requests by status", labels=["status"]
            )
            for status, n in session.execute(
                select(DeletionRequest.status, func.count()).group_by(DeletionRequest.status)
            ):
                by_status.add_metric([status], n)
            yield by_status
            oldest = session.execute(
                select(func.min(DeletionRequest.created_at)).where(
                    DeletionRequest.status.in_([s.value for s in OPEN_REQUEST_STATUSES])
                )
            ).scalar()
            age = GaugeMetricFamily("lethe_queue_oldest_age_seconds", "Age of the oldest open deletion request")
            age.add_metric([], 0.0 if oldest is None else (utcnow() - _aware(oldest)).total_seconds())
            yield age
            versions = GaugeMetricFamily("lethe_model_versions", "Model versions by state", labels=["state"])
            for state, n in session.execute(select(ModelVersion.state, func.count()).group_by(ModelVersion.state)):
                versions.add_metric([state], n)
            yield versions
            names = dict(session.execute(select(Model.id, Model.name)).all())
            bound = GaugeMetricFamily("lethe_last_bound_kl_nats", "Information bound of the newest version", labels=["model"])
            acc = GaugeMetricFamily("lethe_last_eval_accuracy", "Eval accuracy of the newest version", labels=["model"])
            # (ε, δ) models (certified_removal): the newest release's statement, per release
            eps = {key: GaugeMetricFamily(f"lethe_last_{key}", text, labels=["model"]) for key, text in (
                ("epsilon_spent", "ε spent since the last retrain, newest version (per release, not summed)"),
                ("epsilon_budget", "ε budget of the newest version (a job that would pass it retrains)"),
                ("budget_left", "ε budget left after the newest version"),
                ("delta", "δ of the newest version's (ε, δ) statement"))}
            for mid, name in names.items():
                v = session.execute(
                    select(ModelVersion).where(ModelVersion.model_id == mid).order_by(ModelVersion.number.desc()).limit(1)
                ).scalar_one_or_none()
                if v is None:
                    continue
                kl = (v.bound or {}).get("kl_nats")
                if isinstance(kl, (int, float)):
                    bound.add_metric([name], float(kl))
                if isinstance((v.metrics or {}).get("eval_accuracy"), (int, float)):
                    acc.add_metric([name], float(v.metrics["eval_accuracy"]))
                for key, gauge in eps.items():
                    value = (v.bound or {}).get(key)
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        gauge.add_metric([name], float(value))
            yield bound
            yield acc
            yield from eps.values()
            per_model = GaugeMetricFamily("lethe_versions", "Model versions per model and state", labels=["model", "state"])
            for mid, state, n in session.execute(
                select(ModelVersion.model_id, ModelVersion.state, func.count()).group_by(ModelVersion.model_id, ModelVersion.state)
            ):
                per_model.add_metric([names.get(mid, str(mid)), state], n)
            yield per_model
            jobs = GaugeMetricFamily("lethe_jobs", "Jobs by status", labels=["status"])
            for status, n in session.execute(select(Job.status, func.count()).group_by(Job.status)):
                jobs.add_metric([status], n)
            yield jobs
            steps = GaugeMetricFamily("lethe_last_job_step_seconds", "Step durations of the newest finished job", labels=["model", "step"])
            for mid, name in names.items():
                j = session.execute(
                    select(Job).where(Job.model_id == mid, Job.status == "succeeded").order_by(Job.finished_at.desc()).limit(1)
                ).scalar_one_or_none()
                for step in ("solve", "evaluate"):
                    val = (j.metrics or {}).get(f"seconds_{step}") if j else None
                    if isinstance(val, (int, float)):
                        steps.add_metric([name, step], float(val))
            yield steps


def _aware(dt):
    from datetime import UTC

    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


_may_scrape = require(Role.operator, Role.auditor)


def metrics_access(request: Request) -> None:
    """``/metrics`` needs an operator, auditor or admin token unless ``api.public_metrics``."""
    if request.app.state.settings.api.public_metrics:
        return
    with request.app.state.session_factory() as session:
        _may_scrape(authenticate(request, session))


@router.get("/metrics", dependencies=[Depends(metrics_access)])
def metrics(request: Request) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(request.app.state.session_factory))
    for extra in getattr(request.app.state, "metric_collectors", []):
        registry.register(extra)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
