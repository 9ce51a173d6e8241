"""Webhooks (issue 19): subscriptions with their deliveries (and replay), the stop-the-line
banner (a template global, :func:`line_stops`) with the acknowledge action, and the SLA extension
of a request."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from service.admin.auth import check_post, need
from service.admin.web import BadInput, factory, redirect, render, settings
from service.core.db import read_session
from service.deletion_request import service as requests_service
from service.job import repository as job_repo
from service.job import service as job_service
from service.models import Job, Model
from service.webhook import service as webhooks

router = APIRouter()
NAV = ("/webhooks", "Webhooks")
MAX_REASON = 1000


def stopped_lines(session) -> list[tuple[str, Job]]:
    """(model name, the failed job that stops it), for every stopped model."""
    ids = job_repo.stopped_model_ids(session)
    out = []
    for model in session.execute(select(Model).where(Model.id.in_(list(ids))).order_by(Model.name)).scalars():
        job = job_repo.unacknowledged_failure(session, model.id)
        if job is not None:
            out.append((model.name, job))
    return out


def line_stops(request: Request) -> list[tuple[str, Job]]:
    """The banner's content (nothing when the setting is off); one small query per page."""
    if not settings(request).pipeline.stop_the_line:
        return []
    with read_session(factory(request)) as db:
        return stopped_lines(db)


def _reason(form) -> str:
    value = form.get("reason")
    value = value.strip() if isinstance(value, str) else ""
    if not value:
        raise BadInput("A reason is required.")
    return value[:MAX_REASON]


@router.get("/webhooks", response_class=HTMLResponse)
def webhooks_page(request: Request):
    me = need(request)
    with read_session(factory(request)) as db:
        subs = webhooks.list_subscriptions(db, None)
        recent = {s.id: webhooks.deliveries(db, s.id, None, limit=20).items for s in subs}
    return render(request, "webhooks.html", me, subs=subs, recent=recent)


@router.get("/webhooks/{webhook_id}", response_class=HTMLResponse)
def webhook_page(request: Request, webhook_id: int, status: str = ""):
    me = need(request)
    if status and status not in ("pending", "delivering", "delivered", "dead"):
        raise BadInput("Unknown delivery status.")
    with read_session(factory(request)) as db:
        sub = webhooks.get(db, webhook_id, None)
        page = webhooks.deliveries(db, webhook_id, None, status=status or None, limit=200)
    return render(request, "webhook_detail.html", me, sub=sub, items=page.items, filter_status=status)


@router.post("/webhooks/{webhook_id}/deliveries/{delivery_id}/replay")
async def replay(request: Request, webhook_id: int, delivery_id: int):
    me, _ = await check_post(request)
    with factory(request).begin() as db:
        webhooks.replay(db, webhook_id, delivery_id, None, actor=me.actor)
    return redirect(f"/admin/webhooks/{webhook_id}", f"Delivery {delivery_id} queued again (same webhook-id).")


@router.post("/line-stops/{job_id}/acknowledge")
async def acknowledge(request: Request, job_id: uuid.UUID):
    me, form = await check_post(request)
    reason = _reason(form)
    with factory(request).begin() as db:
        job_service.acknowledge_failure(db, job_id, actor=me.actor, reason=reason)
    return redirect(f"/admin/jobs/{job_id}", "Failure acknowledged: the model's line runs again.")


@router.post("/extensions/{rid}")
async def extend(request: Request, rid: uuid.UUID):
    me, form = await check_post(request)
    reason = _reason(form)
    try:
        days = int(str(form.get("days", "")))
    except ValueError:
        raise BadInput("Days must be a whole number.") from None
    if days < 1:
        raise BadInput("Days must be at least 1.")
    with factory(request).begin() as db:
        r = requests_service.extend_due(db, rid, days=days, reason=reason, actor=me.actor,
                                        max_days=settings(request).pipeline.sla_extension_max_days)
    return redirect(f"/admin/requests/{rid}", f"Due date extended to {r.due_at:%Y-%m-%d}.")
