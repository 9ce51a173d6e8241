"""App-level checks: health, readiness, no torch in the API process, settings guards."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.core.config import Settings


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_readyz_reports_database_and_broker(client):
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_readyz_fails_when_broker_unreachable(settings):
    from fastapi.testclient import TestClient

    from service.main import create_app

    bad = settings.model_copy(update={"broker": settings.broker.model_copy(update={"url": "redis://127.0.0.1:1/0"})})
    with TestClient(create_app(bad)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["broker"].startswith("error")


def test_importing_the_api_does_not_import_torch():
    code = "import sys, service.main, service.cli; service.main.create_app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_production_refuses_placeholder_secret():
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(environment="production")
    ok = Settings(environment="production", security={"secret_key": "x" * 40})
    assert ok.security.secret_key == "x" * 40


def test_unknown_route_is_a_problem(client):
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == 404
