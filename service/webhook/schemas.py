"""Bodies of the webhook routes. The signing secret appears once, in ``WebhookCreated``."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2000, description="http(s) URL that receives the deliveries")
    event_types: list[str] = Field(min_length=1, max_length=20, description="Event types to receive (see GET /v1/webhooks/event-types)")
    description: str | None = Field(default=None, max_length=200)


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, max_length=2000)
    event_types: list[str] | None = Field(default=None, min_length=1, max_length=20)
    description: str | None = Field(default=None, max_length=200)
    active: bool | None = None


class WebhookRead(BaseModel):
    id: int
    client_id: int
    url: str
    event_types: list[str]
    description: str | None
    active: bool
    all_clients: bool = Field(description="Receives every client's events (false: only the owner's requests)")
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookRead):
    secret: str = Field(description="The signing secret (whsec_…); shown once")


class AttemptRead(BaseModel):
    number: int
    at: datetime
    status_code: int | None
    latency_ms: int | None
    error: str | None


class DeliveryRead(BaseModel):
    id: int
    message_id: str = Field(description="The webhook-id header: the same on every attempt and replay")
    event_type: str
    status: str = Field(description="pending, delivering, delivered or dead")
    attempts: int = Field(description="Attempts in the current round (a replay starts a new round)")
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_latency_ms: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    history: list[AttemptRead]


class DeliveryPage(BaseModel):
    items: list[DeliveryRead]
