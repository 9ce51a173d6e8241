"""Webhooks end to end with a real HTTP receiver: subscribe, a state change writes its event in
the same transaction, the relay fans it out and delivers it signed; retries, dead letter,
replay, a delivery interrupted after sending, and the bad input of issue 19."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from service.models import AuditEvent, WebhookDelivery, WebhookEvent, WebhookSubscription
from service.models._types import utcnow
from service.webhook import delivery as wd
from test_signing import verify


def _subscribe(client, receiver, role="requester", types=("request.status_changed",)) -> dict:
    r = client.post("/v1/webhooks", json={"url": receiver.url, "event_types": list(types)}, headers=client.auth(role))
    assert r.status_code == 201, r.text
    return r.json()


def _file(client, subject="alice-123") -> dict:
    r = client.post("/v1/deletion-requests", json={"subject_id": subject}, headers=client.auth("requester"))
    assert r.status_code == 202, r.text
    return r.json()


def _count(db, table) -> int:
    db.expire_all()
    return db.scalar(select(func.count()).select_from(table))


def test_a_filed_request_is_delivered_signed_with_the_subject_key_only(client, db, receiver, relay) -> None:
    hook = _subscribe(client, receiver)
    assert hook["secret"].startswith("whsec_") and hook["all_clients"] is False
    # the secret is shown once: never in a read
    assert "secret" not in client.get(f"/v1/webhooks/{hook['id']}", headers=client.auth("requester")).json()
    req = _file(client)
    assert relay() == 1
    (got,) = receiver.received
    assert verify(hook["secret"], got.headers, got.body)
    assert got.headers["webhook-id"].startswith("msg_")
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
    payload = json.loads(got.body)
    assert payload["type"] == "request.status_changed"
    assert payload["data"]["request_id"] == req["id"] and payload["data"]["status"] == req["status"]
    assert payload["data"]["subject_key"] == req["subject_key"]
    assert b"alice-123" not in got.body
    # the history
    page = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=client.auth("requester")).json()
    (item,) = page["items"]
    assert item["status"] == "delivered" and item["history"][0]["status_code"] == 200
    assert item["history"][0]["latency_ms"] >= 0 and item["message_id"] == got.headers["webhook-id"]


def test_every_transition_writes_one_event_in_its_transaction(client, db, receiver, relay) -> None:
    _subscribe(client, receiver, role="operator", types=("request.status_changed",))
    before = _count(db, WebhookEvent)
    req = _file(client)
    assert _count(db, WebhookEvent) == before + 1  # intake: exactly one extra row
    r = client.post(f"/v1/deletion-requests/{req['id']}/cancel", headers=client.auth("requester"))
    assert r.status_code == 200
    assert _count(db, WebhookEvent) == before + 2
    # an illegal transition writes nothing, event included
    r = client.post(f"/v1/deletion-requests/{req['id']}/cancel", headers=client.auth("requester"))
    assert r.status_code == 409
    assert _count(db, WebhookEvent) == before + 2
    relay()
    statuses = [(json.loads(x.body)["data"]["previous_status"], json.loads(x.body)["data"]["status"]) for x in receiver.received]
    assert statuses == [(None, req["status"]), (req["status"], "cancelled")]


def test_500_then_200_is_delivered_twice_and_the_history_shows_both(client, db, receiver, relay) -> None:
    hook = _subscribe(client, receiver)
    receiver.codes = [500]
    _file(client)
    relay()
    page = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=client.auth("requester")).json()
    (item,) = page["items"]
    assert item["status"] == "pending" and item["next_attempt_at"] is not None and item["last_status_code"] == 500
    time.sleep(0.06)  # past the (test-sized) backoff
    relay()
    assert len(receiver.received) == 2
    assert receiver.received[0].headers["webhook-id"] == receiver.received[1].headers["webhook-id"]
    assert receiver.received[0].body == receiver.received[1].body
    (item,) = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=client.auth("requester")).json()["items"]
    assert item["status"] == "delivered"
    assert [(a["number"], a["status_code"]) for a in item["history"]] == [(1, 500), (2, 200)]


def test_down_past_max_attempts_is_dead_and_a_replay_delivers(client, db, receiver, relay, settings) -> None:
    hook = _subscribe(client, receiver)
    receiver.codes = [503] * settings.webhooks.max_attempts
    _file(client)
    for _ in range(settings.webhooks.max_attempts + 2):
        relay()
        time.sleep(0.06)
    (item,) = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=client.auth("requester")).json()["items"]
    assert item["status"] == "dead" and len(item["history"]) == settings.webhooks.max_attempts
    assert len(receiver.received) == settings.webhooks.max_attempts  # no try after the dead letter
    r = client.post(f"/v1/webhooks/{hook['id']}/deliveries/{item['id']}/replay", headers=client.auth("requester"))
    assert r.status_code == 200 and r.json()["status"] == "pending"
    relay()
    (item,) = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=client.auth("requester")).json()["items"]
    assert item["status"] == "delivered" and item["history"][-1]["status_code"] == 200
    assert len({x.headers["webhook-id"] for x in receiver.received}) == 1
    assert db.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == "webhook.replayed")) == 1
    # a delivered one replays too; one still retrying is a 409
    r = client.post(f"/v1/webhooks/{hook['id']}/deliveries/{item['id']}/replay", headers=client.auth("requester"))
    assert r.status_code == 200
    r = client.post(f"/v1/webhooks/{hook['id']}/deliveries/{item['id']}/replay", headers=client.auth("requester"))
    assert r.status_code == 409 and r.json()["current_status"] == "pending"


def test_a_delivery_interrupted_after_sending_is_sent_again_with_the_same_id(client, db, receiver, settings) -> None:
    _subscribe(client, receiver)
    _file(client)
    factory = db.info["factory"]
    short = settings.model_copy(update={"webhooks": settings.webhooks.model_copy(update={"lease_s": 1.0})})
    with factory.begin() as session:
        wd.fan_out(session, short)
    with factory.begin() as session:
        (claimed,) = wd.claim_due(session, short)
    assert wd.send(claimed, short).ok  # the worker dies here: sent, never recorded
    with factory.begin() as session:  # while the lease holds, nobody takes it
        assert wd.claim_due(session, short) == []
    time.sleep(1.1)
    assert wd.run_once(factory, short) == 1
    assert len(receiver.received) == 2
    assert receiver.received[0].headers["webhook-id"] == receiver.received[1].headers["webhook-id"]
    # the dead worker's late record changes nothing (fenced by the attempt number)
    with factory.begin() as session:
        assert wd.record(session, short, claimed, wd.Outcome(500, 1, "late")) is None
    db.expire_all()
    d = db.scalar(select(WebhookDelivery))
    assert d.status == "delivered" and d.attempts == 2


def test_redirects_are_not_followed(client, db, receiver, relay) -> None:
    hook = _subscribe(client, receiver)
    receiver.codes = [302]
    receiver.headers_out = {"location": "http://169.254.169.254/latest/meta-data"}
    _file(client)
    relay()
    (item,) = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=client.auth("requester")).json()["items"]
    assert item["status"] == "pending" and item["last_status_code"] == 302 and "redirect" in item["last_error"]
    assert len(receiver.received) == 1


def test_the_target_is_checked_again_at_delivery(client, db, receiver, relay, settings) -> None:
    hook = _subscribe(client, receiver)
    _file(client)
    strict = settings.model_copy(update={"webhooks": settings.webhooks.model_copy(update={"allow_private_targets": False})})
    relay(strict)
    assert receiver.received == []
    (item,) = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=client.auth("requester")).json()["items"]
    assert item["status"] == "pending" and item["last_error"].startswith("refused") and item["last_status_code"] is None


def test_backoff_grows_exponentially_with_bounded_jitter(settings) -> None:
    import random

    cfg = settings.model_copy(update={"webhooks": settings.webhooks.model_copy(update={"backoff_base_s": 1.0, "backoff_max_s": 1000.0})})
    rng = random.Random(7)
    for attempt in range(1, 8):
        step = 2 ** (attempt - 1)
        samples = [wd.backoff_s(cfg, attempt, rng) for _ in range(50)]
        assert all(step / 2 <= s <= step for s in samples)
        assert max(samples) - min(samples) > step / 10  # jittered, not constant


def test_owners_see_their_subscriptions_and_events_only(client, db, receiver, relay, other_requester) -> None:
    theirs = other_requester
    mine = _subscribe(client, receiver)
    assert client.get(f"/v1/webhooks/{mine['id']}", headers=theirs).status_code == 404
    assert client.get("/v1/webhooks", headers=theirs).json() == []
    assert client.delete(f"/v1/webhooks/{mine['id']}", headers=theirs).status_code == 404
    assert client.get(f"/v1/webhooks/{mine['id']}/deliveries", headers=theirs).status_code == 404
    assert [h["id"] for h in client.get("/v1/webhooks", headers=client.auth("admin")).json()] == [mine["id"]]
    # another client's request is not delivered to my subscription
    r = client.post("/v1/deletion-requests", json={"subject_id": "bob-9"}, headers=theirs)
    assert r.status_code == 202
    relay()
    assert receiver.received == []


def test_update_and_delete(client, db, receiver) -> None:
    hook = _subscribe(client, receiver)
    r = client.patch(f"/v1/webhooks/{hook['id']}", json={"active": False, "event_types": ["request.extended"]},
                     headers=client.auth("requester"))
    assert r.status_code == 200 and r.json()["active"] is False and r.json()["event_types"] == ["request.extended"]
    assert client.delete(f"/v1/webhooks/{hook['id']}", headers=client.auth("requester")).status_code == 204
    assert _count(db, WebhookSubscription) == 0


@pytest.mark.parametrize(
    ("body", "status", "type_"),
    [
        ({"url": "ftp://example.com/x", "event_types": ["request.status_changed"]}, 422, "unsafe-webhook-url"),
        ({"url": "file:///etc/passwd", "event_types": ["request.status_changed"]}, 422, "unsafe-webhook-url"),
        ({"url": "http://127.0.0.1:9/x", "event_types": ["request.status_changed"]}, 422, "unsafe-webhook-url"),
        ({"url": "http://localhost/x", "event_types": ["request.status_changed"]}, 422, "unsafe-webhook-url"),
        ({"url": "http://169.254.169.254/latest", "event_types": ["request.status_changed"]}, 422, "unsafe-webhook-url"),
        ({"url": "http://10.1.2.3/x", "event_types": ["request.status_changed"]}, 422, "unsafe-webhook-url"),
        ({"url": "http://[::1]/x", "event_types": ["request.status_changed"]}, 422, "unsafe-webhook-url"),
        ({"url": "http://[::ffff:127.0.0.1]/x", "event_types": ["request.status_changed"]}, 422, "unsafe-webhook-url"),
        ({"url": "http://0.0.0.0/x", "event_types": ["request.status_changed"]}, 422, "unsafe-webhook-url"),
        ({"url": "http://user:pw@example.com/x", "event_types": ["request.status_changed"]}, 422, "unsafe-webhook-url"),
        ({"url": "https://example.com/x", "event_types": ["no.such.event"]}, 422, "unknown-event-type"),
        ({"url": "https://example.com/x", "event_types": ["job.failed"]}, 422, "unknown-event-type"),
        ({"url": "https://example.com/x", "event_types": []}, 422, "validation-error"),
        ({"url": "https://example.com/x", "event_types": ["request.status_changed"], "secret": "mine"}, 422, "validation-error"),
    ],
)
def test_bad_subscriptions_are_refused_and_nothing_is_written(client, db, settings, body, status, type_) -> None:
    # the routes read the app's settings per request: the same app, stricter settings
    client.app.state.settings = settings.model_copy(
        update={"webhooks": settings.webhooks.model_copy(update={"allow_private_targets": False})})
    before = (_count(db, WebhookSubscription), _count(db, AuditEvent))
    r = client.post("/v1/webhooks", json=body, headers=client.auth("requester"))
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith(type_)
    assert (_count(db, WebhookSubscription), _count(db, AuditEvent)) == before


def test_operator_subscriptions_get_job_and_all_clients_events(client, db, receiver) -> None:
    hook = _subscribe(client, receiver, role="operator", types=("job.failed", "request.status_changed"))
    assert hook["all_clients"] is True
    r = client.patch(f"/v1/webhooks/{hook['id']}", json={"event_types": ["bogus"]}, headers=client.auth("operator"))
    assert r.status_code == 422
    # no delivery for a lapsed event type
    assert _count(db, WebhookDelivery) == 0
    ev = WebhookEvent(type="job.failed", data={"job_id": "x"}, created_at=utcnow() - timedelta(seconds=1))
    db.add(ev)
    db.flush()
    with db.info["factory"].begin() as session:
        wd.fan_out(session, client.app.state.settings)
    assert _count(db, WebhookDelivery) == 1


def test_a_paused_subscription_keeps_its_deliveries_until_resumed(client, db, receiver, relay) -> None:
    hook = _subscribe(client, receiver)
    _file(client)
    with db.info["factory"].begin() as session:
        wd.fan_out(session, client.app.state.settings)
    r = client.patch(f"/v1/webhooks/{hook['id']}", json={"active": False}, headers=client.auth("requester"))
    assert r.status_code == 200
    relay()
    assert receiver.received == []
    client.patch(f"/v1/webhooks/{hook['id']}", json={"active": True}, headers=client.auth("requester"))
    relay()
    assert len(receiver.received) == 1
    assert client.delete(f"/v1/webhooks/{hook['id']}", headers=client.auth("requester")).status_code == 204
    assert _count(db, WebhookDelivery) == 0


def test_a_host_name_is_sent_as_host_to_the_checked_address(client, db, receiver, relay) -> None:
    url = receiver.url.replace("127.0.0.1", "localhost")
    r = client.post("/v1/webhooks", json={"url": url, "event_types": ["request.status_changed"]}, headers=client.auth("requester"))
    assert r.status_code == 201
    _file(client)
    relay()
    (got,) = receiver.received
    assert got.headers["host"] == f"localhost:{receiver.server.server_address[1]}"
