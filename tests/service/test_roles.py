"""Every route of the OpenAPI schema × every role × no token (DESIGN §10, STYLE "route × role").

``RULES`` is the role table as built: for each (method, path) the roles that may call it, or
``PUBLIC``. A route missing from the table fails the test, so a new route cannot ship without
an explicit rule. For an allowed role the answer must be neither 401 nor 403 (nor a 500: the
dummy ids and empty bodies lead to 404/422/409 and the like); for every other role it is a 403
problem; without a token a 401 problem. Admins pass everywhere.
"""

from __future__ import annotations

import uuid

import pytest

from sqlalchemy import func, select

from service.models import ApiToken, AuditEvent, Client, DeletionRequest, Job, Model, OutboxMessage, Role

PUBLIC = "public"
ALL = {"requester", "operator", "serving", "auditor", "admin"}

RULES: dict[tuple[str, str], set[str] | str] = {
    # deletion requests: requesters file, read and cancel their own client's; operators decide
    ("POST", "/v1/deletion-requests"): {"requester", "admin"},
    ("GET", "/v1/deletion-requests"): {"requester", "operator", "auditor", "admin"},
    ("GET", "/v1/deletion-requests/{request_id}"): {"requester", "operator", "auditor", "admin"},
    ("POST", "/v1/deletion-requests/{request_id}/cancel"): {"requester", "admin"},
    ("POST", "/v1/deletion-requests/{request_id}/approve"): {"operator", "admin"},
    ("POST", "/v1/deletion-requests/{request_id}/deny"): {"operator", "admin"},
    ("POST", "/v1/deletion-requests/{request_id}/retry"): {"operator", "admin"},
    ("POST", "/v1/deletion-requests/{request_id}/extend"): {"operator", "admin"},
    # models: only admins register, ingest and train; metadata readable by all roles
    ("POST", "/v1/models"): {"admin"},
    ("GET", "/v1/models"): ALL,
    ("GET", "/v1/models/{name}"): ALL,
    ("POST", "/v1/models/{name}/samples"): {"admin"},
    ("POST", "/v1/models/{name}/class-subjects"): {"admin"},
    ("POST", "/v1/models/{name}/train"): {"admin"},
    ("POST", "/v1/models/{name}/checkpoint"): {"admin"},
    # versions: manifests for serving/operators/auditors; weights for serving only
    ("GET", "/v1/models/{name}/versions"): {"serving", "operator", "auditor", "admin"},
    ("GET", "/v1/models/{name}/versions/{ref}"): {"serving", "operator", "auditor", "admin"},
    ("GET", "/v1/models/{name}/versions/{ref}/weights"): {"serving", "admin"},
    ("GET", "/v1/models/{name}/aliases"): {"serving", "operator", "auditor", "admin"},
    # operators: promote, run now, zero, retry jobs
    ("POST", "/v1/models/{name}/aliases/{alias}"): {"operator", "admin"},
    ("POST", "/v1/models/{name}/forget-now"): {"operator", "admin"},
    ("POST", "/v1/models/{name}/classes/{label}/forget"): {"operator", "admin"},
    ("POST", "/v1/models/{name}/zero"): {"operator", "admin"},
    ("POST", "/v1/models/{name}/retire"): {"operator", "admin"},
    ("POST", "/v1/jobs/{job_id}/retry"): {"operator", "admin"},
    ("POST", "/v1/jobs/{job_id}/acknowledge"): {"operator", "admin"},
    ("GET", "/v1/jobs"): {"operator", "auditor", "admin"},
    ("GET", "/v1/jobs/{job_id}"): {"operator", "auditor", "admin"},
    # audit and receipts
    ("GET", "/v1/audit"): {"auditor", "admin"},
    ("GET", "/v1/audit/verify"): {"auditor", "admin"},
    ("GET", "/v1/audit/checkpoint"): {"auditor", "serving", "admin"},
    ("GET", "/v1/audit/public-key"): PUBLIC,
    ("GET", "/v1/subjects/{subject_id}"): {"auditor", "admin"},
    # clients and tokens: admins only
    ("GET", "/v1/clients"): {"admin"},
    ("POST", "/v1/clients"): {"admin"},
    ("GET", "/v1/tokens"): {"admin"},
    ("POST", "/v1/tokens"): {"admin"},
    ("POST", "/v1/tokens/{token_id}/revoke"): {"admin"},
    # webhooks: every role that learns of changes subscribes (its own client's; admins see all)
    ("GET", "/v1/webhooks"): {"requester", "operator", "auditor", "admin"},
    ("POST", "/v1/webhooks"): {"requester", "operator", "auditor", "admin"},
    ("GET", "/v1/webhooks/event-types"): {"requester", "operator", "auditor", "admin"},
    ("GET", "/v1/webhooks/{webhook_id}"): {"requester", "operator", "auditor", "admin"},
    ("PATCH", "/v1/webhooks/{webhook_id}"): {"requester", "operator", "auditor", "admin"},
    ("DELETE", "/v1/webhooks/{webhook_id}"): {"requester", "operator", "auditor", "admin"},
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): {"requester", "operator", "auditor", "admin"},
    ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/replay"): {"requester", "operator", "auditor", "admin"},
    # OpenDSR: controllers are requesters (their client owns the requests)
    ("GET", "/opendsr/discovery"): PUBLIC,
    ("GET", "/opendsr/cert.pem"): PUBLIC,
    ("POST", "/opendsr/requests"): {"requester", "admin"},
    ("GET", "/opendsr/requests/{subject_request_id}"): {"requester", "admin"},
    ("DELETE", "/opendsr/requests/{subject_request_id}"): {"requester", "admin"},
    # operations
    ("GET", "/metrics"): {"operator", "auditor", "admin"},
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
}

_PARAMS = {
    "request_id": str(uuid.uuid4()),
    "job_id": str(uuid.uuid4()),
    "name": "no-such-model",
    "ref": "latest",
    "alias": "production",
    "subject_id": "someone-1",
    "token_id": "987654",
    "webhook_id": "987654",
    "delivery_id": "987654",
    "subject_request_id": str(uuid.uuid4()),
    "label": "3",
}
# A body that passes validation where the route authenticates after validating (the intake
# hot path does both in one step; see its docstring). Elsewhere an empty JSON object.
_BODIES = {("POST", "/v1/deletion-requests"): {"subject_id": "role-table-subject"}}


def _routes(app) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}


def _call(client, method: str, path: str, headers: dict[str, str]):
    url = path.format(**{k: v for k, v in _PARAMS.items() if "{" + k + "}" in path})
    if method in ("GET", "DELETE"):
        return client.request(method, url, headers=headers)
    return client.request(method, url, json=_BODIES.get((method, path), {}), headers=headers)


def test_every_route_has_an_explicit_rule(client):
    routes = _routes(client.app)
    missing = sorted(routes - set(RULES))
    stale = sorted(set(RULES) - routes)
    assert not missing, f"routes without a rule in the role table: {missing}"
    assert not stale, f"rules for routes that do not exist: {stale}"
    assert {r.value for r in Role} == ALL  # a new role needs a column here too


def _written(db) -> tuple[int, ...]:
    db.expire_all()
    return tuple(db.scalar(select(func.count()).select_from(t))
                 for t in (AuditEvent, DeletionRequest, ApiToken, Client, Model, Job, OutboxMessage))


@pytest.mark.parametrize("route", sorted(RULES), ids=lambda r: f"{r[0]} {r[1]}")
def test_route_by_role(client, db, route):
    method, path = route
    if route not in _routes(client.app):
        pytest.fail(f"{method} {path} is in the table but not in the app")
    rule = RULES[route]
    anonymous = _call(client, method, path, {})
    if rule == PUBLIC:
        assert anonymous.status_code not in (401, 403) and anonymous.status_code < 500, anonymous.text
        return
    before = _written(db)
    assert anonymous.status_code == 401, (route, anonymous.status_code, anonymous.text)
    assert anonymous.headers["content-type"].startswith("application/problem+json")
    bad = _call(client, method, path, {"Authorization": "Bearer lethe_not-a-real-token"})
    assert bad.status_code == 401, (route, bad.text)
    for role in sorted(ALL - set(rule)):
        r = _call(client, method, path, client.auth(role))
        assert r.status_code == 403, (route, role, r.status_code, r.text)
    assert _written(db) == before, f"a refused call to {method} {path} wrote something"
    for role in sorted(ALL):
        r = _call(client, method, path, client.auth(role))
        if role in rule:
            assert r.status_code not in (401, 403) and r.status_code < 500, (route, role, r.status_code, r.text)
        else:
            assert r.status_code == 403, (route, role, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert role in r.json()["detail"]


def test_metrics_is_public_only_when_settings_say_so(client, db, settings):
    from service.main import create_app

    assert client.get("/metrics").status_code == 401
    public = settings.model_copy(update={"api": settings.api.model_copy(update={"public_metrics": True})})
    app = create_app(public)
    with type(client)(app) as c:
        app.state.session_factory = db.info["factory"]
        r = c.get("/metrics")
        assert r.status_code == 200 and "lethe_" in r.text
