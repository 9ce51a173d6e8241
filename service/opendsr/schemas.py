"""OpenDSR bodies (the OpenGDPR / OpenDSR specification, v1.0 shapes)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Identity(BaseModel):
    model_config = ConfigDict(extra="ignore")

    identity_type: str = Field(max_length=64)
    identity_value: str = Field(min_length=1, max_length=256)
    identity_format: str = Field(max_length=16)


class OpenDsrCreate(BaseModel):
    """A controller's request. Unknown top-level fields are ignored (the specification grows by
    adding fields); ``extensions`` are accepted and not used."""

    model_config = ConfigDict(extra="ignore")

    subject_request_id: uuid.UUID
    subject_request_type: str = Field(max_length=32)
    submitted_time: datetime
    subject_identities: list[Identity] = Field(min_length=1, max_length=20)
    regulation: Literal["gdpr", "ccpa"] = "gdpr"
    api_version: str | None = Field(default=None, max_length=16)
    status_callback_urls: list[str] = Field(default_factory=list, max_length=10)
    extensions: dict[str, Any] | None = None


class SupportedIdentity(BaseModel):
    identity_type: str
    identity_format: str
    maps_to: str = Field(description="How Lethe derives the subject id from it")


class Discovery(BaseModel):
    api_version: str
    supported_identities: list[SupportedIdentity]
    supported_subject_request_types: list[str]
    processor_certificate: str
    status_mapping: dict[str, str] = Field(description="Lethe request status -> OpenDSR request_status")


class OpenDsrReceipt(BaseModel):
    """Answer to a filing (201; 200 for a replay of the same ``subject_request_id``)."""

    api_version: str
    controller_id: str
    expected_completion_time: datetime
    received_time: datetime
    encoded_request: str = Field(description="Base64 of the request body as received")
    subject_request_id: uuid.UUID


class OpenDsrStatus(BaseModel):
    api_version: str
    controller_id: str
    expected_completion_time: datetime
    subject_request_id: uuid.UUID
    request_status: Literal["pending", "in_progress", "completed", "cancelled"]
    lethe_request_id: uuid.UUID = Field(description="The deletion request behind it (GET /v1/deletion-requests/{id})")


class OpenDsrCancelled(BaseModel):
    api_version: str
    controller_id: str
    subject_request_id: uuid.UUID
    received_time: datetime
