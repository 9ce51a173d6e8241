"""Statuses and kinds. Stored as plain strings so migrations stay simple and portable."""

from __future__ import annotations

from enum import StrEnum


class RequestStatus(StrEnum):
    received = "received"
    awaiting_approval = "awaiting_approval"
    queued = "queued"
    processing = "processing"
    completed = "completed"
    denied = "denied"
    failed = "failed"
    cancelled = "cancelled"


OPEN_REQUEST_STATUSES = frozenset(
    {
        RequestStatus.received,
        RequestStatus.awaiting_approval,
        RequestStatus.queued,
        RequestStatus.processing,
    }
)


class Split(StrEnum):
    core = "core"
    user = "user"
    eval = "eval"


class JobKind(StrEnum):
    train = "train"
    forget = "forget"
    zero = "zero"
    retrain = "retrain"
    checkpoint = "checkpoint"  # validate an uploaded checkpoint (standard family) and publish it


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE_JOB_STATUSES = frozenset({JobStatus.queued, JobStatus.running})


class JobStep(StrEnum):
    collect = "collect"
    solve = "solve"
    evaluate = "evaluate"
    publish = "publish"


class VersionState(StrEnum):
    live = "live"
    revoked = "revoked"


class Role(StrEnum):
    requester = "requester"
    operator = "operator"
    serving = "serving"
    auditor = "auditor"
    admin = "admin"
