"""A 202 means committed: a request survives SIGKILL of the server right after the answer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from service.models import DeletionRequest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(settings, port: int, log: Path) -> subprocess.Popen:
    env = os.environ | {
        "LETHE_ENVIRONMENT": "test",
        "LETHE_DATABASE__URL": settings.database.url,
        "LETHE_SECURITY__SECRET_KEY": settings.security.secret_key,
        "LETHE_STORAGE__ROOT": str(settings.storage.root),
        "LETHE_BROKER__URL": settings.broker.url,
    }
    cmd = [sys.executable, "-m", "uvicorn", "service.main:create_app", "--factory",
           "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"uvicorn exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"uvicorn did not start:\n{log.read_text()}")


def _then_sigkill(settings, port: int, log: Path, headers: dict, subjects: list[str]) -> list[httpx.Response]:
    """Start a server, file one request per subject on one connection, SIGKILL it at once."""
    proc = _start(settings, port, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as http:
            answers = [http.post("/v1/deletion-requests", json={"subject_id": s, "model": "m1"}) for s in subjects]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return answers


def test_accepted_request_survives_sigkill(committed_app, committed_model, settings, tmp_path):
    committed_model(committed_app.app, "m1")
    headers = committed_app.auth("requester")
    log = tmp_path / "uvicorn.log"
    port = _free_port()
    [r] = _then_sigkill(settings, port, log, headers, ["durable-1"])
    assert r.status_code == 202, r.text
    location = r.headers["location"]

    proc2 = _start(settings, port, log)
    try:
        again = httpx.get(f"http://127.0.0.1:{port}{location}", headers=headers, timeout=10)
    finally:
        proc2.terminate()
        proc2.wait(timeout=10)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == r.json()["id"] and again.json()["subject_id"] == "durable-1"
    assert again.json()["created_at"] == r.json()["created_at"]
    with committed_app.app.state.session_factory() as s:
        assert s.scalar(select(DeletionRequest.status).where(DeletionRequest.id == again.json()["id"])) == "queued"


def test_a_create_answered_on_the_fast_path_survives_sigkill(committed_app, committed_model, settings, tmp_path):
    """The server's first create looks the token up (the route) and caches it; the next ones are
    answered on the event loop (service/deletion_request/intake.py). Killed right after their
    answers, every 202 is a committed row."""
    committed_model(committed_app.app, "m1")
    answers = _then_sigkill(settings, _free_port(), tmp_path / "uvicorn.log", committed_app.auth("requester"),
                            [f"fast-{i}" for i in range(5)])
    assert [r.status_code for r in answers] == [202] * 5, [r.text for r in answers]
    with committed_app.app.state.session_factory() as s:
        stored = {str(i): st for i, st in s.execute(select(DeletionRequest.id, DeletionRequest.status))}
    assert {r.json()["id"]: "queued" for r in answers} == stored
