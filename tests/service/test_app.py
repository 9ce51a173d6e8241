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
    assert r.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


def test_readyz_fails_when_broker_unreachable(settings):
    from fastapi.testclient import TestClient

    from service.main import create_app

    bad = settings.model_copy(update={"broker": settings.broker.model_copy(update={"url": "redis://127.0.0.1:1/0"})})
    with TestClient(create_app(bad)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["broker"].startswith("error")


def test_importing_the_api_does_not_import_torch():
    code = ("import sys, service.main, service.cli; from service.model_registry.schemas import ModelCreate; "
            "ModelCreate(name='a', architecture='mlp', input_shape=[2], num_classes=2, method_config={'l2': 0.1}); "
            "from workers.unlearning.methods import config_classes; assert 'mixed_linear' in config_classes(); "
            "service.main.create_app; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_production_refuses_placeholder_secret():
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(environment="production")
    audit = {"hmac_key": "h" * 40, "signing_key": "A" * 43 + "="}  # base64 of 32 zero bytes
    ok = Settings(environment="production", security={"secret_key": "x" * 40}, audit=audit)
    assert ok.security.secret_key == "x" * 40


def test_unknown_route_is_a_problem(client):
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == 404


def test_metrics_report_requests_versions_and_bounds(client, db):
    import uuid
    from datetime import timedelta

    from service.models import DeletionRequest, Model, ModelVersion
    from service.models._types import utcnow

    m = Model(name="mm", architecture="mlp", architecture_config={}, input_shape=[2], num_classes=2, linearize="all", method_config={})
    db.add(m)
    db.flush()
    now = utcnow()
    db.add(DeletionRequest(id=uuid.uuid4(), subject_key="k" * 64, status="queued", created_at=now - timedelta(seconds=90), due_at=now, attempts=0))
    db.add(ModelVersion(model_id=m.id, number=1, sha256="0" * 64, size_bytes=1, bound={"kl_nats": 2.5e-7}, metrics={"eval_accuracy": 0.9}))
    db.flush()
    text = client.get("/metrics", headers=client.auth("operator")).text
    assert 'lethe_deletion_requests{status="queued"} 1.0' in text
    assert 'lethe_last_bound_kl_nats{model="mm"} 2.5e-07' in text
    age = float(next(line.split()[-1] for line in text.splitlines() if line.startswith("lethe_queue_oldest_age_seconds")))
    assert 85 <= age < 600
