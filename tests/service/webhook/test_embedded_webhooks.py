"""Embedded mode (SQLite, no servers) delivers webhooks too: a real embedded server, a real
receiver; the intake's event (portable path on SQLite) reaches it signed."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.service.embedded_support import EmbeddedServer
from test_signing import verify

pytestmark = pytest.mark.integration


def test_embedded_server_delivers_a_signed_webhook(tmp_path, receiver) -> None:
    server = EmbeddedServer(tmp_path / "data", tmp_path / "serve.log",
                            env={"LETHE_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true", "LETHE_WEBHOOKS__INTERVAL_S": "0.3"})
    try:
        server.start()
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        r = httpx.post(server.base + "/v1/webhooks", json={"url": receiver.url, "event_types": ["request.status_changed"]},
                       headers=headers)
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
        r = httpx.post(server.base + "/v1/deletion-requests", json={"subject_id": "emb-subject-1"}, headers=headers)
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 30
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.1)
        assert receiver.received, server.log.read_text()[-3000:]
        got = receiver.received[0]
        assert verify(secret, got.headers, got.body)
        assert json.loads(got.body)["data"]["request_id"] == r.json()["id"] and b"emb-subject-1" not in got.body
        assert (tmp_path / "data" / "opendsr-signing-key.pem").exists() is False  # made only when first needed
    finally:
        server.stop()
