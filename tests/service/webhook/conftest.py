"""Fixtures of the webhook tests: a real HTTP receiver on loopback, fast retry settings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from service.core.config import Settings
from service.client.tokens import create_token
from service.models import Client, Role
from service.webhook.delivery import run_once


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP server: records every request and answers the next code of ``codes``
    (then ``default``)."""

    server: ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    default: int = 200
    headers_out: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            rec = state["r"]
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            rec.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            code = rec.codes.pop(0) if rec.codes else rec.default
            self.send_response(code)
            for k, v in rec.headers_out.items():
                self.send_header(k, v)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["r"] = Receiver(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["r"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Receivers live on 127.0.0.1, so private targets are allowed; retries are fast."""
    return settings.model_copy(update={"webhooks": settings.webhooks.model_copy(update={
        "allow_private_targets": True, "backoff_base_s": 0.02, "backoff_max_s": 0.05, "max_attempts": 3,
        "timeout_s": 5.0, "lease_s": 30.0})})


@pytest.fixture
def relay(db, settings):
    """One relay round on the test's rolled-back connection."""
    return lambda s=None: run_once(db.info["factory"], s or settings)


@pytest.fixture
def other_requester(db) -> dict[str, str]:
    """Auth headers of a requester of another client."""
    other = Client(name="other-client")
    db.add(other)
    db.flush()
    _, token = create_token(db, Role.requester, "other", client_id=other.id)
    return {"Authorization": f"Bearer {token}"}
