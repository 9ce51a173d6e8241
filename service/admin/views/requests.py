"""Deletion requests: the filtered list with bulk approval, one request's facts and timeline, and
its actions. The actions offered come from ``deletion_request.TRANSITIONS``, so a button is shown
exactly when the service would accept the action."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.admin.auth import check_post, need
from service.admin.web import PREFIX, BadInput, factory, parse_uuid, redirect, render, settings, text_field
from service.audit.router import list_events
from service.core.db import read_session
from service.core.errors import ProblemError
from service.deletion_request import service as requests_service
from service.job import service as job_service
from service.job.router import to_read as job_read
from service.model_registry import service as registry
from service.models import RequestStatus, Role

router = APIRouter()
NAV = ("/requests", "Requests")
REQUEST_ACTIONS = ("approve", "deny", "cancel", "retry")
# Which request actions each status allows, straight from the service's transition table.
ACTIONS_FROM = {action: {s.value for s in requests_service.TRANSITIONS[action][0]} for action in REQUEST_ACTIONS}
MAX_BULK = 500


def _due_limit(due_before: str) -> datetime:
    try:
        return datetime.combine(date.fromisoformat(due_before), time.min, tzinfo=UTC)
    except ValueError:
        raise BadInput(f"'{due_before}' is not a date (YYYY-MM-DD)") from None


@router.get("/requests", response_class=HTMLResponse)
def requests_page(request: Request, status: str = "", model: str = "", subject_id: str = "",
                  due_before: str = "", cursor: str = ""):
    me = need(request)
    try:
        statuses = [RequestStatus(status)] if status else None
    except ValueError:
        raise BadInput(f"'{status}' is not a request status") from None
    limit_at = _due_limit(due_before) if due_before else None
    with read_session(factory(request)) as db:
        # "Due before" is not a filter of the service: walk its pages (bounded) and keep matches.
        items, next_cursor, pages = [], cursor or None, 0
        while True:
            page = requests_service.list_requests(db, secret=settings(request).security.secret_key, statuses=statuses,
                                                  model=model or None, subject_id=subject_id or None,
                                                  cursor=next_cursor, limit=50 if limit_at is None else 200,
                                                  redact=me.role is Role.auditor)
            pages += 1
            items += [r for r in page.items if limit_at is None or r.due_at < limit_at]
            next_cursor = page.next_cursor
            if limit_at is None or next_cursor is None or len(items) >= 50 or pages >= 10:
                break
        models = [m.name for m in registry.list_models(db, after=None, limit=500)[:500]]
    f = {"status": status, "model": model, "subject_id": subject_id, "due_before": due_before}
    return render(request, "requests.html", me, items=items, next_cursor=next_cursor, models=models,
                  statuses=[x.value for x in RequestStatus], f=f, actions_from=ACTIONS_FROM)


@router.post("/requests/bulk-approve")
async def bulk_approve(request: Request):
    me, form = await check_post(request)
    ids = [parse_uuid(v) for v in form.getlist("ids")][:MAX_BULK]
    if not ids:
        return redirect(f"{PREFIX}/requests", "Nothing selected.")
    done, refused = 0, []
    for rid in ids:  # one transaction each: a request that moved on meanwhile does not block the others
        try:
            with factory(request).begin() as db:
                requests_service.transition(db, rid, "approve", actor=me.actor,
                                            stop_the_line=settings(request).pipeline.stop_the_line)
            done += 1
        except ProblemError as exc:
            refused.append(f"{str(rid)[:8]}: {exc.detail}")
    msg = f"Approved {done} request(s)."
    if refused:
        msg += f" Not approved: {len(refused)} ({'; '.join(refused[:3])}{' …' if len(refused) > 3 else ''})."
    return redirect(f"{PREFIX}/requests", msg)


@router.post("/requests/{rid}/{action}")
async def request_action(request: Request, rid: uuid.UUID, action: str):
    me, form = await check_post(request)
    if action not in REQUEST_ACTIONS:
        raise StarletteHTTPException(404, f"No request action '{action}'")
    reason = text_field(form, "reason")
    if action == "deny" and not reason:
        raise BadInput("Denying a request needs a reason.")
    with factory(request).begin() as db:
        r = requests_service.transition(db, rid, action, actor=me.actor, reason=reason,
                                            stop_the_line=settings(request).pipeline.stop_the_line)
    return redirect(f"{PREFIX}/requests/{rid}", f"Request {action}: now {r.status.value}.")


@router.get("/requests/{rid}", response_class=HTMLResponse)
def request_detail(request: Request, rid: uuid.UUID):
    me = need(request)
    with read_session(factory(request)) as db:
        r = requests_service.get(db, rid, redact=me.role is Role.auditor)  # auditors: no raw subject ids
        events = list_events(db, since=0, kind=None, key=r.subject_key, limit=500).items
        job = job_read(db, job_service.get_job(db, r.job_id)) if r.job_id else None
    timeline = [(r.created_at, "created", f"filed{f' by {r.source}' if r.source else ''}; due {r.due_at:%Y-%m-%d}", None)]
    for e in events:
        ours = e.payload.get("request_id") in (None, str(rid))
        if ours or (r.job_id is not None and e.payload.get("job_id") == str(r.job_id)):
            link = f"{PREFIX}/jobs/{e.payload['job_id']}" if e.payload.get("job_id") else None
            timeline.append((e.at, e.kind, f"by {e.actor}", link))
    if job is not None:
        timeline.append((job.created_at, "job", f"{job.kind} job {job.status}", f"{PREFIX}/jobs/{job.id}"))
    if r.completed_at:
        timeline.append((r.completed_at, "completed",
                         f"{r.samples_removed or 0} sample(s) removed; first clean version v{r.clean_version}"
                         if r.clean_version else f"{r.samples_removed or 0} sample(s) removed", None))
    timeline.sort(key=lambda t: t[0])
    return render(request, "request_detail.html", me, r=r, job=job, timeline=timeline, actions_from=ACTIONS_FROM)
