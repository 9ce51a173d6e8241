"""Webhook routes; thin: the logic is in :mod:`service.webhook.service`."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from sqlalchemy.orm import Session

from service.core.db import get_session
from service.client.tokens import Principal, require
from service.models import Role
from service.webhook import events, service
from service.webhook.schemas import DeliveryPage, DeliveryRead, WebhookCreate, WebhookCreated, WebhookRead, WebhookUpdate

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
# Every role that can learn of changes may subscribe; serving tokens pull versions instead.
WhoDep = Annotated[Principal, Depends(require(Role.requester, Role.operator, Role.auditor))]
WebhookId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def _settings(request: Request):
    return request.app.state.settings


@router.get("/event-types")
def event_types(_: WhoDep) -> dict[str, str]:
    """Every event type a subscription can ask for, with what it means."""
    return events.EVENT_TYPES


@router.post("", response_model=WebhookCreated, status_code=201)
def create_webhook(body: WebhookCreate, request: Request, session: SessionDep, who: WhoDep) -> WebhookCreated:
    """Subscribe a URL; the signing secret is in the answer once and never again."""
    return service.create(session, _settings(request), body, who)


@router.get("", response_model=list[WebhookRead])
def list_webhooks(session: SessionDep, who: WhoDep) -> list[WebhookRead]:
    """The caller's client's subscriptions (an admin: all)."""
    return service.list_subscriptions(session, who)


@router.get("/{webhook_id}", response_model=WebhookRead)
def get_webhook(webhook_id: WebhookId, session: SessionDep, who: WhoDep) -> WebhookRead:
    return service.get(session, webhook_id, who)


@router.patch("/{webhook_id}", response_model=WebhookRead)
def update_webhook(webhook_id: WebhookId, body: WebhookUpdate, request: Request, session: SessionDep,
                   who: WhoDep) -> WebhookRead:
    return service.update(session, _settings(request), webhook_id, body, who)


@router.delete("/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: WebhookId, session: SessionDep, who: WhoDep) -> Response:
    service.delete(session, webhook_id, who)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage)
def list_deliveries(
    webhook_id: WebhookId,
    session: SessionDep,
    who: WhoDep,
    status: Literal["pending", "delivering", "delivered", "dead"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DeliveryPage:
    """The delivery history, newest first: status, attempts with status code and latency, next try."""
    return service.deliveries(session, webhook_id, who, status=status, limit=limit)


@router.post("/{webhook_id}/deliveries/{delivery_id}/replay", response_model=DeliveryRead)
def replay_delivery(webhook_id: WebhookId, delivery_id: Annotated[int, Path(ge=1, le=2**62)], session: SessionDep,
                    who: WhoDep) -> DeliveryRead:
    """Send a dead (or delivered) delivery again, with the same webhook-id."""
    return service.replay(session, webhook_id, delivery_id, who)
