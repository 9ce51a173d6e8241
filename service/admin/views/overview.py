"""The overview: request counts by status, the SLA queue, running jobs, each model's latest
version and its bound/accuracy charts (also served as a polled fragment)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from service.admin import queries
from service.admin.auth import need, who
from service.admin.charts import line_chart
from service.admin.web import bound_points, factory, fragment, number, render
from service.core.db import read_session
from service.job import service as job_service
from service.job.router import to_reads as job_reads
from service.model_registry import service as registry
from service.models import JobStatus, RequestStatus
from service.models._types import utcnow

router = APIRouter()
NAV = ("/", "Overview")
CHART_VERSIONS = 60


def _data(db: Session) -> dict:
    now = utcnow()
    by_status = queries.requests_by_status(db)
    sla, overdue, open_total = queries.open_requests_by_due(db, now)
    running = job_reads(db, job_service.list_jobs(db, status=JobStatus.running.value, limit=50)
                        + job_service.list_jobs(db, status=JobStatus.queued.value, limit=50))
    models = registry.list_models(db, after=None, limit=500)[:500]
    names = {m.id: m.name for m in models}
    latest, charts = [], []
    for m in models:
        versions = list(reversed(registry.list_versions(db, m, before=None, limit=CHART_VERSIONS)[:CHART_VERSIONS]))
        if not versions:
            continue
        latest.append({"model": m.name, "v": versions[-1]})
        kl, what, y_label = bound_points([(v.number, v.bound or {}) for v in versions])
        acc = [(v.number, y) for v in versions if (y := number((v.metrics or {}).get("eval_accuracy"))) is not None]
        charts.append({
            "model": m.name,
            "kl": line_chart(kl, title=f"{m.name}: {what}", y_label=y_label),
            "acc": line_chart(acc, title=f"{m.name}: eval accuracy per version", y_label="accuracy"),
        })
    return {"by_status": by_status, "sla": sla, "overdue": overdue, "open_total": open_total, "running": running,
            "names": names, "failed_jobs": queries.failed_job_count(db),
            "failed_requests": queries.failed_request_count(by_status), "latest": latest, "charts": charts,
            "statuses": [s.value for s in RequestStatus]}


@router.get("/", response_class=HTMLResponse)
def overview(request: Request):
    me = need(request)
    with read_session(factory(request)) as db:
        return render(request, "overview.html", me, **_data(db))


@router.get("/fragments/overview", response_class=HTMLResponse)
def overview_fragment(request: Request):
    me = who(request)
    if me is None:
        return HTMLResponse("", status_code=401)
    with read_session(factory(request)) as db:
        return fragment(request, "_live.html", me, **_data(db))
