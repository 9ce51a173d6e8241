"""All tables, imported here so that Alembic sees the full metadata."""

from service.models.base import Base
from service.models.alias import AliasEvent, ModelAlias
from service.models.api_token import ApiToken
from service.models.audit_checkpoint import AuditCheckpoint
from service.models.audit_event import AuditEvent
from service.models.class_subject import ClassSubject, ClassTombstone
from service.models.client import Client
from service.models.deletion_request import DeletionRequest
from service.models.enums import (
    ACTIVE_JOB_STATUSES,
    OPEN_REQUEST_STATUSES,
    JobKind,
    JobStatus,
    JobStep,
    RequestStatus,
    Role,
    Split,
    VersionState,
)
from service.models.job import Job
from service.models.model import Model
from service.models.model_version import ModelVersion
from service.models.outbox import OutboxMessage
from service.models.sample import Sample, SampleChunk
from service.models.subject_tombstone import SubjectTombstone
from service.models.version_artifact import VersionArtifact
from service.models.webhook import OpenDsrRequest, WebhookAttempt, WebhookDelivery, WebhookEvent, WebhookSubscription

__all__ = [
    "ACTIVE_JOB_STATUSES",
    "OPEN_REQUEST_STATUSES",
    "AliasEvent",
    "ApiToken",
    "AuditCheckpoint",
    "AuditEvent",
    "ClassSubject",
    "ClassTombstone",
    "Base",
    "Client",
    "DeletionRequest",
    "Job",
    "JobKind",
    "JobStatus",
    "JobStep",
    "Model",
    "ModelAlias",
    "ModelVersion",
    "OpenDsrRequest",
    "OutboxMessage",
    "RequestStatus",
    "Role",
    "Sample",
    "SampleChunk",
    "Split",
    "SubjectTombstone",
    "VersionArtifact",
    "VersionState",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEvent",
    "WebhookSubscription",
]
