"""The relay of webhook events and the delivery of messages (DESIGN §12).

1. :func:`fan_out` turns each new event row into one delivery per matching subscription (and one
   per OpenDSR status callback URL of the request it concerns), with the body fixed once.
2. :func:`claim_due` takes due deliveries in a short transaction (``SKIP LOCKED``): status
   ``delivering``, ``attempts + 1``, a lease. A worker that dies after sending leaves the lease to
   run out; the delivery is then sent again with the same ``webhook-id`` (at least once; the
   receiver drops duplicates by that id).
3. :func:`send` posts it, outside any transaction: to the address checked by the SSRF guard,
   no redirects, bounded time and response size.
4. :func:`record` writes the attempt (history) and the outcome: ``delivered`` on a 2xx; else
   ``pending`` again after an exponential backoff with jitter, or ``dead`` after
   ``webhooks.max_attempts``. A replay puts a delivery back to ``pending`` for a new round.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from service.core.config import Settings
from service.models import OpenDsrRequest, WebhookAttempt, WebhookDelivery, WebhookEvent, WebhookSubscription
from service.models._types import utcnow
from service.opendsr import callbacks as opendsr_callbacks
from service.webhook import events, signing, targets

log = logging.getLogger("lethe.webhooks")

PENDING, DELIVERING, DELIVERED, DEAD = "pending", "delivering", "delivered", "dead"
STANDARD, OPENDSR = "standard", "opendsr"
USER_AGENT = "Lethe-Webhooks/1"


def _dumps(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def standard_body(event: WebhookEvent) -> str:
    return _dumps({"type": event.type, "timestamp": event.created_at.isoformat(), "data": event.data})


def _locked(session: Session, query):
    return query.with_for_update(skip_locked=True) if session.get_bind().dialect.name == "postgresql" else query


def _new_delivery(event: WebhookEvent, fmt: str, url: str, body: str, now: datetime,
                  subscription_id: int | None = None) -> WebhookDelivery:
    return WebhookDelivery(message_id=f"msg_{uuid.uuid4().hex}", event_id=event.id, subscription_id=subscription_id,
                           format=fmt, url=url, event_type=event.type, body=body, status=PENDING, attempts=0,
                           next_attempt_at=now, created_at=now)


def fan_out(session: Session, settings: Settings, *, now: datetime | None = None, batch: int = 500) -> int:
    """Deliveries for the oldest events not fanned out yet; returns how many events were done."""
    now = now or utcnow()
    evs = list(session.execute(_locked(session, select(WebhookEvent).where(WebhookEvent.fanned_out_at.is_(None))
                                       .order_by(WebhookEvent.id).limit(batch))).scalars())
    if not evs:
        return 0
    subs = list(session.execute(select(WebhookSubscription).where(WebhookSubscription.active.is_(True))).scalars())
    request_ids = {uuid.UUID(e.data["request_id"]) for e in evs if e.type == events.REQUEST_STATUS}
    dsr: dict[uuid.UUID, list[OpenDsrRequest]] = {}
    if request_ids:
        for o in session.execute(select(OpenDsrRequest).where(OpenDsrRequest.request_id.in_(list(request_ids)))).scalars():
            dsr.setdefault(o.request_id, []).append(o)
    for ev in evs:
        body = None
        for sub in subs:
            if ev.type in sub.event_types and (sub.all_clients or (ev.client_id is not None and ev.client_id == sub.client_id)):
                body = body or standard_body(ev)
                session.add(_new_delivery(ev, STANDARD, sub.url, body, now, sub.id))
        mapped = dsr.get(uuid.UUID(ev.data["request_id"]), []) if ev.type == events.REQUEST_STATUS else []
        for od in mapped:
            for url in od.status_callback_urls:
                session.add(_new_delivery(ev, OPENDSR, url, _dumps(opendsr_callbacks.body(od, ev.data, url)), now))
        ev.fanned_out_at = now
    return len(evs)


@dataclass(frozen=True)
class Claimed:
    id: int
    message_id: str
    format: str
    url: str
    body: str
    attempt: int
    secret_sealed: str | None


def claim_due(session: Session, settings: Settings, *, now: datetime | None = None) -> list[Claimed]:
    now = now or utcnow()
    q = (select(WebhookDelivery, WebhookSubscription.secret_sealed)
         .outerjoin(WebhookSubscription, WebhookSubscription.id == WebhookDelivery.subscription_id)
         .where(or_((WebhookDelivery.status == PENDING) & (WebhookDelivery.next_attempt_at <= now),
                    (WebhookDelivery.status == DELIVERING) & (WebhookDelivery.lease_until < now)),
                # a paused (inactive) subscription keeps its deliveries until it is active again
                or_(WebhookDelivery.subscription_id.is_(None), WebhookSubscription.active.is_(True)))
         .order_by(WebhookDelivery.next_attempt_at).limit(settings.webhooks.batch))
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(of=WebhookDelivery, skip_locked=True)
    out = []
    for d, sealed in session.execute(q).all():
        d.status = DELIVERING
        d.attempts += 1
        d.lease_until = now + timedelta(seconds=settings.webhooks.lease_s)
        out.append(Claimed(d.id, d.message_id, d.format, d.url, d.body, d.attempts, sealed))
    return out


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    latency_ms: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _headers(claimed: Claimed, settings: Settings) -> dict[str, str]:
    body = claimed.body.encode()
    if claimed.format == OPENDSR:
        return opendsr_callbacks.headers(settings, body)
    secret = signing.unseal(settings.security.secret_key, claimed.secret_sealed or "")
    return signing.headers(secret, claimed.message_id, int(time.time()), body)


def send(claimed: Claimed, settings: Settings) -> Outcome:
    """POST the delivery once; never raises (a failure is an outcome)."""
    cfg = settings.webhooks
    started = time.monotonic()
    try:
        target = targets.resolve(claimed.url, allow_private=cfg.allow_private_targets)
        headers = {**_headers(claimed, settings), "content-type": "application/json", "user-agent": USER_AGENT,
                   "host": target.host_header}
        ext = {"sni_hostname": target.host} if target.scheme == "https" else {}
        code = _post(target, claimed.body.encode(), headers, ext, cfg, started)
        latency = int((time.monotonic() - started) * 1000)
        error = None if 200 <= code < 300 else f"HTTP {code}" + (" (redirects are not followed)" if 300 <= code < 400 else "")
        return Outcome(code, latency, error)
    except targets.UnsafeTarget as exc:
        return Outcome(None, int((time.monotonic() - started) * 1000), f"refused: {exc.detail}")
    except Exception as exc:  # noqa: BLE001 - network errors of every kind are a failed attempt
        return Outcome(None, int((time.monotonic() - started) * 1000), f"{type(exc).__name__}: {exc}"[:500])


def _post_once(http: httpx.Client, url: str, body: bytes, headers: dict[str, str], ext: dict, cfg, started: float) -> int:
    with http.stream("POST", url, content=body, headers=headers, extensions=ext) as resp:
        read = 0
        for chunk in resp.iter_bytes():  # drain a bounded amount, in bounded time
            read += len(chunk)
            if read >= cfg.max_response_bytes or time.monotonic() - started > cfg.timeout_s:
                break
        return resp.status_code


def _post(target: targets.Target, body: bytes, headers: dict[str, str], ext: dict, cfg, started: float) -> int:
    """POST to the checked addresses in turn (the next one only when connecting failed); the
    status code. No redirects."""
    with httpx.Client(timeout=cfg.timeout_s, follow_redirects=False, trust_env=False) as http:
        for address in target.addresses[:-1]:
            try:
                return _post_once(http, target.connect_url(address), body, headers, ext, cfg, started)
            except httpx.ConnectError:
                continue
        return _post_once(http, target.connect_url(target.addresses[-1]), body, headers, ext, cfg, started)


def backoff_s(settings: Settings, attempt: int, rng: random.Random | None = None) -> float:
    """Exponential with "equal jitter": half of ``base * 2**(attempt-1)`` (capped) plus a random
    part up to the other half, so retries of many deliveries spread out but never come early."""
    cfg = settings.webhooks
    step = min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** (attempt - 1))
    return step / 2 + (rng or random).uniform(0, step / 2)


def record(session: Session, settings: Settings, claimed: Claimed, outcome: Outcome, *,
           now: datetime | None = None) -> str | None:
    """Write the attempt and the outcome; None when another worker took the delivery meanwhile."""
    now = now or utcnow()
    d = session.execute(select(WebhookDelivery).where(WebhookDelivery.id == claimed.id).with_for_update()).scalar()
    if d is None or d.status != DELIVERING or d.attempts != claimed.attempt:
        return None
    number = (session.execute(select(func.count()).select_from(WebhookAttempt)
                              .where(WebhookAttempt.delivery_id == d.id)).scalar() or 0) + 1
    session.add(WebhookAttempt(delivery_id=d.id, number=number, at=now, status_code=outcome.status_code,
                               latency_ms=outcome.latency_ms, error=outcome.error))
    d.last_status_code, d.last_latency_ms, d.last_error = outcome.status_code, outcome.latency_ms, outcome.error
    d.lease_until = None
    if outcome.ok:
        d.status, d.delivered_at, d.next_attempt_at = DELIVERED, now, None
    elif d.attempts >= settings.webhooks.max_attempts:
        d.status, d.next_attempt_at = DEAD, None
        log.warning("webhook delivery %s dead after %d attempts: %s", d.message_id, d.attempts, outcome.error)
    else:
        d.status = PENDING
        d.next_attempt_at = now + timedelta(seconds=backoff_s(settings, d.attempts))
    return d.status


def run_once(factory: sessionmaker[Session], settings: Settings) -> int:
    """One round of the relay: fan out new events, then send what is due. Returns the number of
    deliveries attempted."""
    with factory.begin() as session:
        fan_out(session, settings)
    with factory.begin() as session:
        claimed = claim_due(session, settings)
    for c in claimed:
        outcome = send(c, settings)
        with factory.begin() as session:
            record(session, settings, c, outcome)
    return len(claimed)
