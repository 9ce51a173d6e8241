from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class AuditEventRead(BaseModel):
    seq: int
    at: datetime
    actor: str
    kind: str
    subject_key: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEventRead]
    next_since: int | None


class ChainVerificationRead(BaseModel):
    ok: bool
    events: int
    first_broken_seq: int | None
    reason: str | None
    head_hash: str | None
