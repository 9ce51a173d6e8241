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
