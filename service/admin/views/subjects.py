"""A subject's receipt: which requests, versions and samples concerned a subject id."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from service.admin.auth import need
from service.admin.web import BadInput, factory, render, settings
from service.core.db import read_session
from service.subject.service import receipt

router = APIRouter()
NAV = ("/subjects", "Subjects")


@router.get("/subjects", response_class=HTMLResponse)
def subjects_page(request: Request, subject_id: str = ""):
    me = need(request)
    rec = None
    subject_id = subject_id.strip()
    if len(subject_id) > 256:
        raise BadInput("A subject id has at most 256 characters.")
    if subject_id:
        with read_session(factory(request)) as db:
            rec = receipt(db, settings(request).security.secret_key, subject_id)
    return render(request, "subjects.html", me, rec=rec, subject_id=subject_id)
