"""OpenDSR processor endpoints with a real controller callback receiver: discovery, create →
status → callbacks (RSA-SHA256 signed, verified with the certificate from discovery) →
completion; idempotency; cancellation; the bad input of issue 19."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from sqlalchemy import func, select

from service.models import AuditEvent, DeletionRequest, OpenDsrRequest, WebhookEvent


@pytest.fixture
def settings(settings, tmp_path):
    return settings.model_copy(update={"opendsr": settings.opendsr.model_copy(update={
        "key_file": tmp_path / "opendsr.pem", "processor_domain": "lethe.test", "public_url": "http://testserver"})})


def _request(receiver_url: str | None = None, **over) -> dict:
    body = {
        "subject_request_id": str(uuid.uuid4()),
        "subject_request_type": "erasure",
        "submitted_time": "2026-11-30T10:00:00Z",
        "subject_identities": [{"identity_type": "controller_customer_id", "identity_value": "frank-42",
                                "identity_format": "raw"}],
        "api_version": "1.0",
        "status_callback_urls": [receiver_url] if receiver_url else [],
    }
    return body | over


def _verifier(client):
    disc = client.get("/opendsr/discovery").json()
    assert disc["processor_certificate"] == "http://testserver/opendsr/cert.pem"
    cert = x509.load_pem_x509_certificate(client.get("/opendsr/cert.pem").content)
    key = cert.public_key()

    def verify(headers, raw: bytes) -> None:  # raises InvalidSignature
        assert headers["x-opendsr-processor-domain"] == "lethe.test"
        key.verify(base64.b64decode(headers["x-opendsr-signature"]), raw, padding.PKCS1v15(), hashes.SHA256())

    return verify


def test_discovery_documents_erasure_identities_and_statuses(client) -> None:
    disc = client.get("/opendsr/discovery").json()
    assert disc["supported_subject_request_types"] == ["erasure"]
    assert {(i["identity_type"], i["identity_format"]) for i in disc["supported_identities"]} == {
        ("controller_customer_id", "raw"), ("email", "raw")}
    assert set(disc["status_mapping"].values()) == {"pending", "in_progress", "completed", "cancelled"}


def test_create_status_callbacks_completion(client, db, receiver, relay, settings) -> None:
    verify = _verifier(client)
    body = _request(receiver.url)
    r = client.post("/opendsr/requests", json=body, headers=client.auth("requester"))
    assert r.status_code == 201, r.text
    verify(r.headers, r.content)
    created = r.json()
    assert created["subject_request_id"] == body["subject_request_id"]
    assert json.loads(base64.b64decode(created["encoded_request"])) == body
    # idempotent: the same id answers the same request, nothing new
    n = db.scalar(select(func.count()).select_from(DeletionRequest))
    again = client.post("/opendsr/requests", json=body, headers=client.auth("requester"))
    assert again.status_code == 200 and again.json()["expected_completion_time"] == created["expected_completion_time"]
    assert db.scalar(select(func.count()).select_from(DeletionRequest)) == n
    # status
    r = client.get(f"/opendsr/requests/{body['subject_request_id']}", headers=client.auth("requester"))
    assert r.status_code == 200
    verify(r.headers, r.content)
    assert r.json()["request_status"] == "pending"
    # the filing's callback
    relay()
    (first,) = receiver.received
    verify(first.headers, first.body)
    cb = json.loads(first.body)
    assert cb["request_status"] == "pending" and cb["status_callback_url"] == receiver.url
    assert cb["subject_request_id"] == body["subject_request_id"] and b"frank-42" not in first.body
    # the scheduler completes it (no model holds the subject): a second callback, completed
    from service.job import service as job_service

    with db.info["factory"].begin() as session:
        job_service.schedule(session, settings)
    relay()
    assert [json.loads(x.body)["request_status"] for x in receiver.received] == ["pending", "completed"]
    verify(receiver.received[1].headers, receiver.received[1].body)
    r = client.get(f"/opendsr/requests/{body['subject_request_id']}", headers=client.auth("requester"))
    assert r.json()["request_status"] == "completed"


def test_cancel_while_pending(client, db, receiver, relay) -> None:
    body = _request(receiver.url)
    assert client.post("/opendsr/requests", json=body, headers=client.auth("requester")).status_code == 201
    r = client.delete(f"/opendsr/requests/{body['subject_request_id']}", headers=client.auth("requester"))
    assert r.status_code == 202 and r.json()["subject_request_id"] == body["subject_request_id"]
    relay()
    assert [json.loads(x.body)["request_status"] for x in receiver.received] == ["pending", "cancelled"]
    r = client.delete(f"/opendsr/requests/{body['subject_request_id']}", headers=client.auth("requester"))
    assert r.status_code == 409


def test_another_controller_sees_nothing(client, db, other_requester) -> None:
    theirs = other_requester
    body = _request()
    assert client.post("/opendsr/requests", json=body, headers=client.auth("requester")).status_code == 201
    assert client.get(f"/opendsr/requests/{body['subject_request_id']}", headers=theirs).status_code == 404
    assert client.delete(f"/opendsr/requests/{body['subject_request_id']}", headers=theirs).status_code == 404
    r = client.post("/opendsr/requests", json=body, headers=theirs)
    assert r.status_code == 409


def _ident(t: str, f: str, v: str = "x-1") -> list[dict]:
    return [{"identity_type": t, "identity_value": v, "identity_format": f}]


@pytest.mark.parametrize(
    ("over", "status"),
    [
        ({"subject_request_type": "access"}, 400),
        ({"subject_request_type": "portability"}, 400),
        ({"subject_identities": _ident("email", "sha256")}, 400),
        ({"subject_identities": _ident("android_advertising_id", "raw")}, 400),
        ({"subject_identities": []}, 422),
        ({"subject_identities": _ident("controller_customer_id", "raw", "bad\u200bid")}, 400),
        ({"subject_request_id": "not-a-uuid"}, 422),
        ({"regulation": "lgpd"}, 422),
        ({"status_callback_urls": ["ftp://controller.example/cb"]}, 400),
        ({"status_callback_urls": ["http://127.0.0.1:9/cb"]}, 400),
        ({"status_callback_urls": ["http://169.254.169.254/cb"]}, 400),
    ],
)
def test_bad_requests_are_refused_and_nothing_is_written(client, db, settings, over, status) -> None:
    # the routes read the app's settings per request: the same app, stricter settings
    client.app.state.settings = settings.model_copy(
        update={"webhooks": settings.webhooks.model_copy(update={"allow_private_targets": False})})

    def written():
        db.expire_all()
        return tuple(db.scalar(select(func.count()).select_from(t)) for t in
                     (DeletionRequest, OpenDsrRequest, AuditEvent, WebhookEvent))

    before = written()
    r = client.post("/opendsr/requests", json=_request(**over), headers=client.auth("requester"))
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    if status == 400:
        assert r.json()["error"]["code"] == 400
    assert written() == before


def test_production_needs_a_configured_key_and_writes_nothing_without_one(client, db, settings) -> None:
    client.app.state.settings = settings.model_copy(update={"environment": "production"})
    before = db.scalar(select(func.count()).select_from(DeletionRequest))
    r = client.post("/opendsr/requests", json=_request(), headers=client.auth("requester"))
    assert r.status_code == 503 and r.json()["type"].endswith("opendsr-not-configured")
    assert client.get("/opendsr/cert.pem").status_code == 503
    assert db.scalar(select(func.count()).select_from(DeletionRequest)) == before
