"""GET /v1/subjects/{subject_id}: the deletion receipt an auditor asks for.

The raw subject id travels in the path (and in ``?subject_id=`` of other routes), so the HTTP
access log is filtered here: those values are replaced by ``<redacted>`` before any handler
formats the line. Nothing else in this route logs or stores the raw id.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy.orm import Session

from service.core.db import get_session
from service.core.types import SubjectId
from service.client.tokens import Principal, require
from service.models import Role
from service.subject.schemas import SubjectReceipt
from service.subject.service import receipt

router = APIRouter(tags=["subjects"])

REDACTED = "<redacted>"
_SUBJECT_PATH = re.compile(r"(/v1/subjects/)[^/?#\s]+")
_SUBJECT_QUERY = re.compile(r"([?&]subject_id=)[^&#\s]*")


def redact_subject_ids(text: str) -> str:
    return _SUBJECT_QUERY.sub(r"\1" + REDACTED, _SUBJECT_PATH.sub(r"\1" + REDACTED, text))


class RedactSubjectIds(logging.Filter):
    """Scrub raw subject ids from access-log records (uvicorn passes the path in ``args``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(redact_subject_ids(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact_subject_ids(record.msg)
        return True


def install_log_redaction(logger_names: tuple[str, ...] = ("uvicorn.access",)) -> None:
    for name in logger_names:
        lg = logging.getLogger(name)
        if not any(isinstance(f, RedactSubjectIds) for f in lg.filters):
            lg.addFilter(RedactSubjectIds())


install_log_redaction()


@router.get("/v1/subjects/{subject_id}", response_model=SubjectReceipt)
def subject_receipt(
    request: Request,
    session: Annotated[Session, Depends(get_session, scope="function")],
    subject_id: Annotated[SubjectId, Path()],
    model: Annotated[str | None, Query(min_length=1, max_length=64, description="Only this model")] = None,
    _: Principal = Depends(require(Role.auditor)),
) -> SubjectReceipt:
    return receipt(session, request.app.state.settings.security.secret_key, subject_id, model)
