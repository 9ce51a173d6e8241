"""Clients and token lifecycle (DESIGN §10): admin routes, the `lethe client|token` commands
against PostgreSQL, audited revocation, and revocation within the token-cache time."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from sqlalchemy import select, update

from service.client.tokens import hash_token
from service.models import ApiToken, AuditEvent, Client
from service.models._types import utcnow


def _events(db, kind):
    db.expire_all()
    return db.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.seq)).all()


def test_admin_creates_a_client_and_a_token_lists_and_revokes_it(client, db):
    admin = client.auth("admin")
    r = client.post("/v1/clients", json={"name": "shop-backend"}, headers=admin)
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    assert r.json()["active_tokens"] == 0
    dup = client.post("/v1/clients", json={"name": "shop-backend"}, headers=admin)
    assert dup.status_code == 409 and dup.json()["type"].endswith("/client-exists")

    r = client.post("/v1/tokens", json={"role": "requester", "name": "shop-1", "client_id": cid}, headers=admin)
    assert r.status_code == 201, r.text
    made = r.json()
    secret = made["token"]
    assert secret.startswith("lethe_") and made["client"] == "shop-backend" and made["role"] == "requester"
    stored = db.scalars(select(ApiToken).where(ApiToken.id == made["id"])).one()
    assert stored.token_hash == hash_token(secret) and stored.client_id == cid

    listed = client.get("/v1/tokens", headers=admin)
    assert listed.status_code == 200 and secret not in listed.text and stored.token_hash not in listed.text
    assert made["id"] in [t["id"] for t in listed.json()]
    clients = {c["name"]: c for c in client.get("/v1/clients", headers=admin).json()}
    assert clients["shop-backend"]["active_tokens"] == 1

    h = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/deletion-requests", headers=h).status_code == 200  # cached now
    r = client.post(f"/v1/tokens/{made['id']}/revoke", headers=admin)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    # Revoked in this process: refused at once, although the lookup was cached.
    r = client.get("/v1/deletion-requests", headers=h)
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")
    again = client.post(f"/v1/tokens/{made['id']}/revoke", headers=admin)
    assert again.status_code == 200 and again.json()["revoked_at"] == r_revoked_at(db, made["id"])
    assert [e.payload["token_id"] for e in _events(db, "token.revoked")] == [made["id"]]  # audited once
    assert [e.payload["client_id"] for e in _events(db, "client.created")] == [cid]
    assert [e.payload["token_id"] for e in _events(db, "token.created")] == [made["id"]]
    active = client.get("/v1/tokens?include_revoked=false", headers=admin).json()
    assert made["id"] not in [t["id"] for t in active]


def r_revoked_at(db, token_id):
    db.expire_all()
    return db.get(ApiToken, token_id).revoked_at.isoformat().replace("+00:00", "Z")


def test_bad_token_and_client_input_is_a_problem_and_writes_nothing(client, db):
    admin = client.auth("admin")
    before = len(_events(db, "token.created")), len(db.scalars(select(ApiToken)).all())
    for body in ({"role": "wizard", "name": "x", "client_id": 1}, {"role": "requester", "name": " ", "client_id": 1},
                 {"role": "requester", "name": "x"}, {"role": "requester", "name": "x", "client_id": 0},
                 {"role": "requester", "name": "x", "client_id": 1, "extra": 1}):
        r = client.post("/v1/tokens", json=body, headers=admin)
        assert r.status_code == 422, (body, r.text)
    r = client.post("/v1/tokens", json={"role": "requester", "name": "x", "client_id": 2**31 - 1}, headers=admin)
    assert r.status_code == 404 and r.json()["type"].endswith("/client-not-found")
    assert client.post("/v1/tokens/2147483647/revoke", headers=admin).status_code == 404
    assert client.post("/v1/tokens/0/revoke", headers=admin).status_code == 422
    assert client.post("/v1/clients", json={"name": ""}, headers=admin).status_code == 422
    assert (len(_events(db, "token.created")), len(db.scalars(select(ApiToken)).all())) == before
    # Non-admins: 403, nothing written.
    r = client.post("/v1/clients", json={"name": "sneaky"}, headers=client.auth("operator"))
    assert r.status_code == 403
    assert db.scalars(select(Client).where(Client.name == "sneaky")).first() is None


def test_revocation_elsewhere_takes_effect_within_the_cache_ttl(client, db, settings):
    """Another process revoked the token (a plain UPDATE: this process's cache is not told).
    The cached lookup is used until ``security.token_cache_ttl_s`` passes, then refused."""
    from service.main import create_app

    ttl = 1.0
    quick = settings.model_copy(update={"security": settings.security.model_copy(update={"token_cache_ttl_s": ttl})})
    app = create_app(quick)
    with type(client)(app) as c:
        app.state.session_factory = db.info["factory"]
        h = client.auth("auditor")
        assert c.get("/v1/audit/verify", headers=h).status_code == 200  # lookup cached
        db.execute(update(ApiToken).where(ApiToken.name == "test-auditor").values(revoked_at=utcnow()))
        db.flush()
        start = time.monotonic()
        assert c.get("/v1/audit/verify", headers=h).status_code == 200  # the documented window
        time.sleep(max(0.0, ttl + 0.1 - (time.monotonic() - start)))
        r = c.get("/v1/audit/verify", headers=h)
        assert r.status_code == 401 and "revoked" in r.json()["detail"]


def _cli(database_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "LETHE_DATABASE__URL": database_url, "LETHE_ENVIRONMENT": "test"}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, env=env, check=check)


def test_cli_client_create_token_list_and_revoke_on_postgres(clean_tables, database_url):
    cid = _cli(database_url, "client", "create", "ops-team").stdout.strip()
    assert cid.isdigit()
    token = _cli(database_url, "token", "create", "--role", "operator", "--name", "ops-1", "--client", "ops-team").stdout.strip()
    other = _cli(database_url, "token", "create", "--role", "requester", "--name", "shop").stdout.strip()
    assert token.startswith("lethe_") and other.startswith("lethe_")
    out = _cli(database_url, "token", "list").stdout
    assert token not in out and other not in out
    lines = [x.split("\t") for x in out.strip().splitlines()]
    assert [(x[1], x[2], x[3]) for x in lines] == [("operator", "ops-team", "ops-1"), ("requester", "shop", "shop")]
    assert all(x[-1] == "revoked=-" for x in lines)
    tid = lines[0][0]
    r = _cli(database_url, "token", "revoke", tid)
    assert f"revoked token {tid}" in r.stdout
    listed = _cli(database_url, "token", "list").stdout.strip().splitlines()
    assert listed[0].split("\t")[-1] != "revoked=-" and listed[1].endswith("revoked=-")
    assert _cli(database_url, "token", "list", "--active").stdout.count("\n") == 1
    missing = _cli(database_url, "token", "revoke", "999999", check=False)
    assert missing.returncode == 1 and "No token with id 999999" in missing.stderr
    dup = _cli(database_url, "client", "create", "ops-team", check=False)
    assert dup.returncode == 1 and "exists" in dup.stderr
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    eng = create_engine(database_url)
    try:
        with Session(eng) as s:
            kinds = [e.kind for e in s.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
            row = s.get(ApiToken, int(tid))
            assert row.revoked_at is not None and row.token_hash == hash_token(token)
    finally:
        eng.dispose()
    assert kinds == ["client.created", "token.created", "token.created", "token.revoked"]


def test_a_lookup_racing_with_a_revocation_does_not_keep_the_token_cached(clean_tables):
    """The revoking process stops the token at once, even when a lookup of another request read
    the row before the revocation committed: cached before the commit (the commit forgets it
    again), or read before it and cached after (a lookup older than a revocation is not cached)."""
    from types import SimpleNamespace  # noqa: PLC0415

    from sqlalchemy.orm import Session  # noqa: PLC0415
    from starlette.requests import Request  # noqa: PLC0415

    from service.client import tokens  # noqa: PLC0415
    from service.models import Role  # noqa: PLC0415

    engine = clean_tables
    with Session(engine) as s:
        row, raw = tokens.create_token(s, Role.requester, "racy")
        s.commit()
        token_id = row.id
    request = Request({"type": "http", "headers": [(b"authorization", f"Bearer {raw}".encode())],
                       "app": SimpleNamespace(state=SimpleNamespace())})

    # 1. the racing lookup caches before the revocation commits
    tokens.clear_token_cache()
    with Session(engine) as revoking:
        tokens.revoke_token(revoking, token_id)
        with Session(engine) as other:
            assert tokens.authenticate(request, other).token_id == token_id  # reads the row unrevoked
        assert tokens.cached_principal(request) is not None
        revoking.commit()
    assert tokens.cached_principal(request) is None

    # 2. it reads before the revocation commits and caches after
    with Session(engine) as s:
        s.execute(update(ApiToken).where(ApiToken.id == token_id).values(revoked_at=None))
        s.commit()
    tokens.clear_token_cache()
    real = tokens.principal_for_token
    with Session(engine) as revoking:
        tokens.revoke_token(revoking, token_id)

        def read_then_commit(session, token):
            got = real(session, token)
            revoking.commit()
            return got

        tokens.principal_for_token = read_then_commit
        try:
            with Session(engine) as other:
                tokens.authenticate(request, other)
        finally:
            tokens.principal_for_token = real
    assert tokens.cached_principal(request) is None
