from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base
from service.models._types import BigIntPK, JSONType, TZDateTime, utcnow


class WebhookSubscription(Base):
    """Where a client wants to hear of changes (DESIGN §12).

    ``secret_sealed`` is the signing secret encrypted with a key derived from the server secret:
    the secret must be usable to sign every delivery, so a one-way hash would not do, and a
    database dump alone does not reveal it. ``all_clients``: the subscription sees every client's
    events (operators, auditors, admins); a requester's sees only its own client's requests."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    event_types: Mapped[list[str]] = mapped_column(JSONType, default=list)
    description: Mapped[str | None] = mapped_column(String(200), nullable=True)
    secret_sealed: Mapped[str] = mapped_column(Text)
    all_clients: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)


class WebhookEvent(Base):
    """One state change, written in the transaction that made it (the outbox of notifications).
    ``client_id``: the owner of the request it concerns (NULL for jobs and versions).
    ``fanned_out_at``: when the relay turned it into deliveries."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    fanned_out_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True, index=True)


class WebhookDelivery(Base):
    """One message to one URL: a subscription's (``standard``: Standard Webhooks signature) or an
    OpenDSR status callback (``opendsr``: RSA signature). ``message_id`` is the ``webhook-id``:
    the same on every attempt and replay, so a receiver can drop duplicates. ``body`` is fixed
    at fan-out, so every attempt sends the same bytes."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True)
    subscription_id: Mapped[int | None] = mapped_column(
        ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"), nullable=True, index=True
    )
    format: Mapped[str] = mapped_column(String(16), default="standard")
    url: Mapped[str] = mapped_column(String(2000))
    event_type: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class WebhookAttempt(Base):
    """The history: one row per try (status code or error, latency)."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class OpenDsrRequest(Base):
    """An OpenDSR erasure request (DESIGN §12): the controller's ``subject_request_id`` (the
    idempotency key) mapped onto one deletion request, with its callback URLs."""

    __tablename__ = "opendsr_requests"

    subject_request_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"), index=True)
    # Not unique: two OpenDSR requests for one subject may merge into one deletion request.
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("deletion_requests.id"), index=True)
    status_callback_urls: Mapped[list[str]] = mapped_column(JSONType, default=list)
    regulation: Mapped[str] = mapped_column(String(16))
    submitted_time: Mapped[datetime] = mapped_column(TZDateTime)
    received_time: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
