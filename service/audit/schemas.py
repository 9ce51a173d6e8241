from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class AuditEventRead(BaseModel):
    seq: int
    at: datetime
    actor: str
    kind: str
    subject_key: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str
    key_id: str | None = Field(description="Id of the HMAC key that links this event (the key is never stored)")


class AuditPage(BaseModel):
    items: list[AuditEventRead]
    next_since: int | None


class ChainVerificationRead(BaseModel):
    ok: bool
    events: int
    first_broken_seq: int | None
    reason: str | None
    head_hash: str | None
    checkpoint_seq: int | None = Field(description="Seq covered by the latest signed checkpoint (null: none yet)")
    events_after_checkpoint: int | None = Field(
        description="Events after the latest checkpoint: protected by the HMAC only, until the next checkpoint"
    )


class CheckpointRead(BaseModel):
    """Signed with Ed25519 over the canonical JSON ``{"at","head","key_id","seq"}`` (sorted keys,
    no spaces); ``signature`` is base64."""

    seq: int
    head: str
    at: str
    key_id: str
    signature: str
    algorithm: str


class PublicKeyRead(BaseModel):
    key_id: str
    algorithm: str
    public_key_pem: str
    public_key_b64: str
