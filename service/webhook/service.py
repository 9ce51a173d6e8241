"""Webhook subscriptions and their deliveries: create, list, update, delete, history, replay.

Ownership: a subscription belongs to the client of the token that made it. A requester's
subscription receives only its own client's request events (``all_clients`` false) and may ask
only for request event types; an operator's, auditor's or admin's receives every event. Lists
show the caller's client's subscriptions; an admin sees all. Another client's subscription is
``404``, like a missing one. Never commits (the boundary does)."""

from __future__ import annotations

from sqlalchemy import delete as sa_delete
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.audit.service import append_event
from service.core.config import Settings
from service.core.errors import Conflict, IllegalTransition, NotFound, ProblemError
from service.client.tokens import Principal
from service.models import Role, WebhookAttempt, WebhookDelivery, WebhookSubscription
from service.models._types import utcnow
from service.webhook import events, signing, targets
from service.webhook.delivery import DEAD, DELIVERED, PENDING
from service.webhook.schemas import (
    AttemptRead,
    DeliveryPage,
    DeliveryRead,
    WebhookCreate,
    WebhookCreated,
    WebhookRead,
    WebhookUpdate,
)


class WebhookNotFound(NotFound):
    type, title = "webhook-not-found", "Unknown webhook subscription"


class DeliveryNotFound(NotFound):
    type, title = "webhook-delivery-not-found", "Unknown webhook delivery"


class UnknownEventType(ProblemError):
    status, type, title = 422, "unknown-event-type", "Unknown or forbidden webhook event type"


class TooManySubscriptions(Conflict):
    type, title = "too-many-webhooks", "The client has the maximum number of webhook subscriptions"


def _read(sub: WebhookSubscription) -> WebhookRead:
    return WebhookRead(id=sub.id, client_id=sub.client_id, url=sub.url, event_types=list(sub.event_types),
                       description=sub.description, active=sub.active, all_clients=sub.all_clients,
                       created_at=sub.created_at, updated_at=sub.updated_at)


def _check_types(types: list[str], all_clients: bool) -> list[str]:
    unknown = sorted(set(types) - set(events.EVENT_TYPES))
    if unknown:
        raise UnknownEventType(f"Unknown event types: {', '.join(unknown)}", known=sorted(events.EVENT_TYPES))
    if not all_clients:
        hidden = sorted(set(types) - events.REQUEST_EVENT_TYPES)
        if hidden:
            raise UnknownEventType(f"A requester's webhook receives request events only, not: {', '.join(hidden)}",
                                   allowed=sorted(events.REQUEST_EVENT_TYPES))
    return sorted(set(types))


def _check_url(url: str, settings: Settings) -> str:
    targets.resolve(url, allow_private=settings.webhooks.allow_private_targets)
    return url


def create(session: Session, settings: Settings, data: WebhookCreate, who: Principal) -> WebhookCreated:
    types = _check_types(data.event_types, who.sees_everything)
    url = _check_url(data.url, settings)
    count = session.execute(select(func.count()).select_from(WebhookSubscription)
                            .where(WebhookSubscription.client_id == who.client_id)).scalar() or 0
    if count >= settings.webhooks.max_subscriptions_per_client:
        raise TooManySubscriptions(f"A client may have at most {settings.webhooks.max_subscriptions_per_client} subscriptions")
    secret = signing.new_secret()
    now = utcnow()
    sub = WebhookSubscription(client_id=who.client_id, url=url, event_types=types, description=data.description,
                              secret_sealed=signing.seal(settings.security.secret_key, secret),
                              all_clients=who.sees_everything, active=True, created_by=who.actor,
                              created_at=now, updated_at=now)
    session.add(sub)
    session.flush()
    append_event(session, actor=who.actor, kind="webhook.created",
                 payload={"webhook_id": sub.id, "client_id": sub.client_id, "event_types": types})
    return WebhookCreated(**_read(sub).model_dump(), secret=secret)


def _find(session: Session, webhook_id: int, who: Principal | None, *, lock: bool = False) -> WebhookSubscription:
    """``who`` None: the dashboard, whose signed-in operators see every subscription."""
    q = select(WebhookSubscription).where(WebhookSubscription.id == webhook_id)
    sub = session.execute(q.with_for_update() if lock else q).scalar()
    if sub is None or (who is not None and who.role is not Role.admin and sub.client_id != who.client_id):
        raise WebhookNotFound(f"No webhook subscription with id {webhook_id}")
    return sub


def list_subscriptions(session: Session, who: Principal | None) -> list[WebhookRead]:
    q = select(WebhookSubscription).order_by(WebhookSubscription.id)
    if who is not None and who.role is not Role.admin:
        q = q.where(WebhookSubscription.client_id == who.client_id)
    return [_read(s) for s in session.execute(q).scalars()]


def get(session: Session, webhook_id: int, who: Principal | None) -> WebhookRead:
    return _read(_find(session, webhook_id, who))


def update(session: Session, settings: Settings, webhook_id: int, data: WebhookUpdate, who: Principal) -> WebhookRead:
    sub = _find(session, webhook_id, who, lock=True)
    changes = data.model_dump(exclude_unset=True)
    if changes.get("event_types") is not None:
        sub.event_types = _check_types(changes["event_types"], sub.all_clients)
    if changes.get("url") is not None:
        sub.url = _check_url(changes["url"], settings)
    if "description" in changes:
        sub.description = changes["description"]
    if changes.get("active") is not None:
        sub.active = changes["active"]
    sub.updated_at = utcnow()
    session.flush()
    append_event(session, actor=who.actor, kind="webhook.updated",
                 payload={"webhook_id": sub.id, "fields": sorted(changes)})
    return _read(sub)


def delete(session: Session, webhook_id: int, who: Principal) -> None:
    sub = _find(session, webhook_id, who, lock=True)
    # its deliveries and their history go with it (explicitly: SQLite may not enforce the cascade)
    ids = select(WebhookDelivery.id).where(WebhookDelivery.subscription_id == sub.id)
    session.execute(sa_delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(ids)))
    session.execute(sa_delete(WebhookDelivery).where(WebhookDelivery.subscription_id == sub.id))
    session.delete(sub)
    session.flush()
    append_event(session, actor=who.actor, kind="webhook.deleted", payload={"webhook_id": webhook_id})


def _delivery_read(d: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryRead:
    return DeliveryRead(
        id=d.id, message_id=d.message_id, event_type=d.event_type, status=d.status, attempts=d.attempts,
        next_attempt_at=d.next_attempt_at if d.status == PENDING else None, last_status_code=d.last_status_code,
        last_latency_ms=d.last_latency_ms, last_error=d.last_error, delivered_at=d.delivered_at, created_at=d.created_at,
        history=[AttemptRead(number=a.number, at=a.at, status_code=a.status_code, latency_ms=a.latency_ms, error=a.error)
                 for a in attempts],
    )


def deliveries(session: Session, webhook_id: int, who: Principal | None, *, status: str | None = None,
               limit: int = 50) -> DeliveryPage:
    """Newest first, each with its attempt history."""
    sub = _find(session, webhook_id, who)
    q = select(WebhookDelivery).where(WebhookDelivery.subscription_id == sub.id)
    if status is not None:
        q = q.where(WebhookDelivery.status == status)
    rows = list(session.execute(q.order_by(WebhookDelivery.id.desc()).limit(limit)).scalars())
    history: dict[int, list[WebhookAttempt]] = {d.id: [] for d in rows}
    if rows:
        for a in session.execute(select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(list(history)))
                                 .order_by(WebhookAttempt.number)).scalars():
            history[a.delivery_id].append(a)
    return DeliveryPage(items=[_delivery_read(d, history[d.id]) for d in rows])


def replay(session: Session, webhook_id: int, delivery_id: int, who: Principal | None, *, actor: str | None = None) -> DeliveryRead:
    """Back to ``pending`` now, for a new round of attempts, with the same ``webhook-id``. Only a
    dead or delivered delivery; one still in its retries is a 409."""
    sub = _find(session, webhook_id, who)
    d = session.execute(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id,
                                                      WebhookDelivery.subscription_id == sub.id).with_for_update()).scalar()
    if d is None:
        raise DeliveryNotFound(f"No delivery {delivery_id} for webhook {webhook_id}")
    if d.status not in (DEAD, DELIVERED):
        raise IllegalTransition(f"Delivery {delivery_id} is {d.status}; only a dead or delivered one can be replayed",
                                current_status=d.status)
    d.status, d.attempts, d.next_attempt_at, d.lease_until = PENDING, 0, utcnow(), None
    session.flush()
    append_event(session, actor=actor or (who.actor if who else "dashboard"), kind="webhook.replayed",
                 payload={"webhook_id": sub.id, "delivery_id": d.id, "message_id": d.message_id})
    attempts = list(session.execute(select(WebhookAttempt).where(WebhookAttempt.delivery_id == d.id)
                                    .order_by(WebhookAttempt.number)).scalars())
    return _delivery_read(d, attempts)
