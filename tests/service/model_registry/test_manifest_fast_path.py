"""The manifest fast path (service/model_registry/fast_path.py) answers cache hits ahead of
FastAPI's routing, exactly as the route does: the same status, headers (header for header, in
order) and body as an app without it, and everything that is not a hit left to the route."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.client.tokens import create_token, revoke_token
from service.core.config import Settings
from service.main import create_app
from service.model_registry import router as registry_router
from service.model_registry.fast_path import _PATH, ManifestFastPath
from service.model_registry.service import move_alias
from service.models import ApiToken, Model, Role

from tests.conftest import ApiClient
from tests.service.model_registry.test_manifest_cache import SPEC, _version, _wait_for

URL = "/v1/models/mc/versions"


def _count_route_calls(monkeypatch) -> dict[int, list[str]]:
    """Every run of the manifest route's body (``get_version``: its first statement looks up the
    token cache through the router module), by ``id(app)``. The fast path looks the token up
    through ``service.client.tokens`` and is not counted."""
    calls: dict[int, list[str]] = {}
    real = registry_router.cached_principal

    def counting(request):
        calls.setdefault(id(request.app), []).append(request.url.path)
        return real(request)

    monkeypatch.setattr(registry_router, "cached_principal", counting)
    return calls


def _fast_path(app) -> ManifestFastPath | None:
    node = app.middleware_stack
    while node is not None and not isinstance(node, ManifestFastPath):
        node = getattr(node, "app", None)
    return node


@pytest.fixture
def pair(client, db, settings: Settings, monkeypatch):
    """``(fast, slow)``: the app as configured (fast path on) and the same app without the fast
    path, on the same rolled-back database and tokens, with their route invocations counted."""
    slow_settings = settings.model_copy(update={"api": settings.api.model_copy(update={"manifest_fast_path": False})})
    slow_app = create_app(slow_settings)
    with ApiClient(slow_app) as slow:
        slow_app.state.session_factory = db.info["factory"]
        slow.tokens = client.tokens
        for c in (client, slow):
            _wait_for(lambda c=c: c.app.state.manifests.ready, "the manifest listener connected")
        assert _fast_path(client.app) is not None and _fast_path(slow_app) is None
        calls = _count_route_calls(monkeypatch)
        client.calls, slow.calls = calls.setdefault(id(client.app), []), calls.setdefault(id(slow_app), [])
        assert client.post("/v1/models", json=SPEC, headers=client.auth("admin")).status_code == 201
        model = db.execute(select(Model).where(Model.name == "mc")).scalar_one()
        v1 = _version(db, client.app.state.store, model, 1)
        move_alias(db, model, "latest", v1, "pipeline", system=True)
        move_alias(db, model, "production", v1, "op")
        db.flush()
        yield client, slow


def same(pair, url: str, headers: dict[str, str]):
    """GET ``url`` on both apps; they must agree on status, every header (in order) and body."""
    fast, slow = pair
    rs = slow.get(url, headers=headers)
    rf = fast.get(url, headers=headers)
    assert rf.status_code == rs.status_code, (rf.status_code, rs.status_code, rf.text)
    assert rf.headers.raw == rs.headers.raw
    assert rf.content == rs.content
    return rf


def test_the_router_sends_exactly_the_fast_paths_paths_to_the_manifest_route(pair):
    """The fast path's pattern must take the paths the router gives ``get_version`` and no other
    (asked of the app without the fast path)."""
    _, slow = pair
    paths = [f"{URL}/latest", f"{URL}/production", f"{URL}/1", f"{URL}/007", f"{URL}/x.y", "/v1/models/a b/versions/latest",
             "/v1/models/a%2Fb/versions/latest", f"{URL}/latest/weights", f"{URL}/latest/", f"{URL}/", URL, "/v1/models/mc",
             "/v1/models//versions/latest", f"{URL}/latest/extra", "/admin/v1/models/mc/versions/latest", "/v1/models/mc/versions/latest.json"]
    for path in paths:
        before = len(slow.calls)
        slow.get(path, headers=slow.auth("serving"), follow_redirects=False)
        routed = len(slow.calls) > before
        assert routed == (_PATH.fullmatch(unquote(path)) is not None), path
    assert len(slow.calls) > 5


def test_hits_and_304s_are_answered_before_routing_exactly_as_the_route_answers(pair):
    fast, slow = pair
    serve = fast.auth("serving")
    for ref in ("latest", "production", "1"):
        first = same(pair, f"{URL}/{ref}", serve)  # fills both caches (through both routes)
        assert first.status_code == 200 and first.headers["cache-control"] == "no-cache"
    assert len(fast.calls) == len(slow.calls) == 3
    fp = _fast_path(fast.app)
    before = fp.answered
    etag = first.headers["etag"]
    asked = [
        (f"{URL}/latest", serve),
        (f"{URL}/1", serve),
        (f"{URL}/latest", {**serve, "If-None-Match": etag}),
        (f"{URL}/1", {**serve, "If-None-Match": etag}),
        (f"{URL}/production", {**serve, "If-None-Match": f'W/{etag}, "other"'}),
        (f"{URL}/latest", {**serve, "If-None-Match": "*"}),
        (f"{URL}/latest", {**serve, "If-None-Match": '"stale"'}),
        (f"{URL}/latest?wait=5", {**serve, "If-None-Match": '"stale"'}),  # long-poll, changed: 200 at once
        (f"{URL}/1?wait=5", {**serve, "If-None-Match": etag}),  # a number never moves: 304 at once
        (f"{URL}/latest", fast.auth("operator")),
        (f"{URL}/latest", fast.auth("auditor")),
        (f"{URL}/latest", fast.auth("admin")),
        (f"{URL}/latest", {"Authorization": "bearer  " + fast.tokens["serving"] + " "}),
    ]
    statuses = [same(pair, url, h).status_code for url, h in asked]
    assert statuses == [200, 200, 304, 304, 304, 304, 200, 200, 304, 200, 200, 200, 200]
    assert fp.answered - before == len(asked)  # every one a fast answer ...
    assert len(fast.calls) == 3  # ... and the route never ran for them
    assert len(slow.calls) == 3 + len(asked)  # while the other app's route answered each one


def test_what_is_not_a_hit_goes_to_the_route_unchanged(pair, settings):
    fast, slow = pair
    serve = fast.auth("serving")
    etag = same(pair, f"{URL}/latest", serve).headers["etag"]
    same(pair, f"{URL}/latest", serve)
    fp = _fast_path(fast.app)
    n = fp.answered
    cases = [
        ("/v1/models/nope/versions/latest", serve, 404),  # unknown model: never cached
        (f"{URL}/9", serve, 404),  # unknown version
        (f"{URL}/latest", {}, 401),  # no token
        (f"{URL}/latest", {"Authorization": "Basic abc"}, 401),
        (f"{URL}/latest", {"Authorization": "Bearer lethe_unknown"}, 401),
        (f"{URL}/latest", fast.auth("requester"), 403),  # the role check
        (f"{URL}/latest?wait=0", serve, 422),
        (f"{URL}/latest?wait=abc", serve, 422),
        (f"{URL}/latest?wait={settings.api.long_poll_max_s + 1}", serve, 422),
        (f"{URL}/latest?other=1", serve, 200),  # not a plain wait=: the route decides
        (f"{URL}/latest?wait=0.2", {**serve, "If-None-Match": etag}, 304),  # a real long-poll
    ]
    for url, headers, status in cases:
        assert same(pair, url, headers).status_code == status, url
    assert fp.answered == n  # none of them answered fast (FastAPI refuses a bad ``wait`` before the route runs)


def test_a_revoked_token_is_refused_even_with_the_manifest_cached(pair, db):
    fast, slow = pair
    serve = fast.auth("serving")
    assert same(pair, f"{URL}/latest", serve).status_code == 200  # token and manifest now cached
    fp = _fast_path(fast.app)
    n = fp.answered
    assert same(pair, f"{URL}/latest", serve).status_code == 200 and fp.answered == n + 1
    token_id = db.execute(select(ApiToken.id).where(ApiToken.name == "test-serving")).scalar_one()
    revoke_token(db, token_id)
    db.flush()
    r = same(pair, f"{URL}/latest", serve)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert fp.answered == n + 1


def test_a_publish_invalidates_what_the_fast_path_serves(pair, db):
    fast, _ = pair
    serve = fast.auth("serving")
    old = same(pair, f"{URL}/latest", serve)
    assert same(pair, f"{URL}/latest", {**serve, "If-None-Match": old.headers["etag"]}).status_code == 304
    calls = len(fast.calls)
    model = db.execute(select(Model).where(Model.name == "mc")).scalar_one()
    move_alias(db, model, "latest", _version(db, fast.app.state.store, model, 2), "pipeline", system=True)
    db.flush()
    new = same(pair, f"{URL}/latest", {**serve, "If-None-Match": old.headers["etag"]})
    assert new.status_code == 200 and new.json()["number"] == 2 and new.headers["etag"] != old.headers["etag"]
    assert len(fast.calls) == calls + 1  # the miss after the invalidation went to the route
    assert same(pair, f"{URL}/latest", serve).json()["number"] == 2
    assert len(fast.calls) == calls + 1  # and the refilled entry is served fast again


def test_the_limits_middlewares_still_apply_in_front_of_the_fast_path(pair, settings):
    fast, _ = pair
    serve = fast.auth("serving")
    same(pair, f"{URL}/latest", serve)
    fp, calls = _fast_path(fast.app), len(fast.calls)
    n = fp.answered
    big = {**serve, "X-Pad": "a" * settings.api.max_header_bytes}
    r = same(pair, f"{URL}/latest", big)
    assert r.status_code == 431 and r.headers["content-type"].startswith("application/problem+json")
    r = same(pair, f"{URL}/latest", {**serve, "Content-Length": str(settings.api.max_body_bytes + 1)})
    assert r.status_code == 413
    assert fp.answered == n and len(fast.calls) == calls
    # a GET with a (small) body is not a plain hit: the route answers it
    fs, ss = pair
    rf = fs.request("GET", f"{URL}/latest", headers=serve, content=b"{}")
    rs = ss.request("GET", f"{URL}/latest", headers=serve, content=b"{}")
    assert (rf.status_code, rf.headers.raw, rf.content) == (rs.status_code, rs.headers.raw, rs.content)
    assert fp.answered == n and len(fast.calls) == calls + 1


def test_embedded_sqlite_hits_follow_another_processs_commit(tmp_path: Path, monkeypatch):
    """In embedded mode a job process commits to the SQLite file without notifying anyone: the
    fast path must not serve the old manifest after it (``PRAGMA data_version``)."""
    from service.core import migrate

    db_path = tmp_path / "lethe.db"
    settings = Settings(environment="test", database={"url": f"sqlite:///{db_path}"}, broker={"url": "memory://"},
                        storage={"root": tmp_path / "artifacts"},
                        security={"secret_key": "test-secret-key-that-is-long-enough-0123456789"})
    migrate.upgrade(settings.database.url)
    app = create_app(settings)
    with TestClient(app) as c:
        factory = app.state.session_factory
        with factory.begin() as s:
            _, admin = create_token(s, Role.admin, name="admin")
            _, token = create_token(s, Role.serving, name="serving")
        assert c.post("/v1/models", json=SPEC, headers={"Authorization": f"Bearer {admin}"}).status_code == 201
        with factory.begin() as s:
            model = s.execute(select(Model).where(Model.name == "mc")).scalar_one()
            v1 = _version(s, app.state.store, model, 1)
            v2 = _version(s, app.state.store, model, 2)
            move_alias(s, model, "latest", v1, "pipeline", system=True)
            v2_id = v2.id
        calls = _count_route_calls(monkeypatch).setdefault(id(app), [])
        serve = {"Authorization": f"Bearer {token}"}
        assert c.get(f"{URL}/latest", headers=serve).json()["number"] == 1
        assert c.get(f"{URL}/latest", headers=serve).json()["number"] == 1
        assert len(calls) == 1 and _fast_path(app).answered == 1  # the second was a fast hit
        other = sqlite3.connect(db_path)  # "a job": moves latest without any in-process hook
        with other:
            other.execute("UPDATE model_aliases SET version_id = ? WHERE name = 'latest'", (v2_id,))
        other.close()
        assert c.get(f"{URL}/latest", headers=serve).json()["number"] == 2
        assert len(calls) == 2
