"""The audit log, filtered by kind or subject, and verification of its hash chain (auditors may
verify: it only reads)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from service.admin.auth import check_post, need
from service.admin.web import BadInput, factory, render, settings
from service.audit.router import list_events
from service.audit.service import verify_chain
from service.core.db import read_session
from service.core.security import subject_key

router = APIRouter()
NAV = ("/audit", "Audit")


def _data(db: Session, secret: str, since: int, kind: str, subject_id: str) -> dict:
    key = subject_key(secret, subject_id) if subject_id else None
    return {"page": list_events(db, since=since, kind=kind or None, key=key, limit=100),
            "f": {"since": since, "kind": kind, "subject_id": subject_id}}


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, since: int = 0, kind: str = "", subject_id: str = ""):
    me = need(request)
    if since < 0:
        raise BadInput("'since' is a sequence number (0 or more).")
    with read_session(factory(request)) as db:
        return render(request, "audit.html", me, verification=None,
                      **_data(db, settings(request).security.secret_key, since, kind, subject_id))


@router.post("/audit/verify", response_class=HTMLResponse)
async def audit_verify(request: Request):
    me, _ = await check_post(request, act=False)  # reading: auditors may verify
    with read_session(factory(request)) as db:
        result = verify_chain(db)
        return render(request, "audit.html", me, verification=result,
                      **_data(db, settings(request).security.secret_key, 0, "", ""))
