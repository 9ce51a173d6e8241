"""The intake fast path (service/deletion_request/intake.py) on the real engine: it answers a
create exactly as the route does, and leaves everything else to the route."""

from __future__ import annotations

import re
import uuid

import psycopg
import pytest
from sqlalchemy import func, select

from service.deletion_request import repository, router
from service.main import create_app
from service.models import DeletionRequest, WebhookEvent

URL = "/v1/deletion-requests"


@pytest.fixture
def paths(monkeypatch) -> dict[str, int]:
    """How many creates each path wrote: ``fast`` (the event-loop insert created a row) and
    ``route`` (the route's one worker-thread transaction ran)."""
    seen = {"fast": 0, "route": 0}
    fast, route = repository.insert_with_policy_on, router._create_in_one_transaction

    async def counting_fast(*args, **kwargs):
        got = await fast(*args, **kwargs)
        seen["fast"] += got is not None
        return got

    def counting_route(*args, **kwargs):
        seen["route"] += 1
        return route(*args, **kwargs)

    monkeypatch.setattr(repository, "insert_with_policy_on", counting_fast)
    monkeypatch.setattr(router, "_create_in_one_transaction", counting_route)
    return seen


def _post(app, role="requester", key=None, headers=None, **body):
    h = app.auth(role) | ({"Idempotency-Key": key} if key else {}) | (headers or {})
    return app.post(URL, json=body, headers=h)


def _count(app) -> int:
    with app.app.state.session_factory() as s:
        return s.scalar(select(func.count()).select_from(DeletionRequest))


def _shape(value):
    """A value with its digits (hex digits too) blanked: the same format, whatever the instant or id."""
    return re.sub(r"[0-9a-f]", "0", value) if isinstance(value, str) else type(value).__name__


def test_a_cached_token_is_answered_on_the_fast_path_exactly_as_the_route_answers(committed_app, committed_model, paths):
    committed_model(committed_app.app, "m1", sla_days=12)
    by_route = _post(committed_app, key="k1", subject_id="fp-1", model="m1", reason="asked", source="app")
    assert paths == {"fast": 0, "route": 1}  # the token was not cached yet: the route looked it up
    by_fast = _post(committed_app, key="k2", subject_id="fp-2", model="m1", reason="asked", source="app")
    assert paths == {"fast": 1, "route": 1}

    for r in (by_route, by_fast):
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"{URL}/{r.json()['id']}"
        assert r.headers["lethe-outcome"] == "created"
        assert r.headers["content-type"] == "application/json"
    a, b = by_route.json(), by_fast.json()
    assert list(a) == list(b)
    differ = {"id", "subject_id", "subject_key", "created_at", "due_at", "approved_at", "days_left"}
    assert {k: v for k, v in a.items() if k not in differ} == {k: v for k, v in b.items() if k not in differ}
    assert {k: _shape(a[k]) for k in differ} == {k: _shape(b[k]) for k in differ}
    assert b["subject_id"] == "fp-2" and b["status"] == "queued" and b["approved_by"] == "policy:auto_approve"

    # Committed, with its webhook event, and read back as created.
    with committed_app.app.state.session_factory() as s:
        row = s.get(DeletionRequest, uuid.UUID(b["id"]))
        assert row is not None and row.subject_id == "fp-2" and row.idempotency_key.endswith(":k2")
        events = s.scalars(select(WebhookEvent).where(WebhookEvent.data["request_id"].as_string() == b["id"])).all()
        assert [(e.type, e.data["status"]) for e in events] == [("request.status_changed", "queued")]
    got = committed_app.get(by_fast.headers["location"], headers=committed_app.auth("requester"))
    assert got.json() == b | {"days_left": got.json()["days_left"]}

    # A replay of the fast path's create: the insert creates nothing, the route answers it.
    again = _post(committed_app, key="k2", subject_id="fp-2", model="m1", reason="asked", source="app")
    assert again.status_code == 200 and again.headers["lethe-outcome"] == "replayed" and again.json()["id"] == b["id"]
    assert paths == {"fast": 1, "route": 2} and _count(committed_app) == 2


@pytest.mark.parametrize(
    ("role", "headers", "body", "status"),
    [
        ("operator", {}, {"subject_id": "s", "model": "m1"}, 403),  # a cached token whose role may not file
        ("auditor", {}, {"subject_id": "s", "model": "m1"}, 403),
        ("requester", {}, {"model": "m1"}, 422),  # the body does not validate
        ("requester", {}, {"subject_id": "s", "model": "m1", "extra": 1}, 422),
        ("requester", {}, {"subject_id": "  ", "model": "m1"}, 422),
        ("requester", {"Idempotency-Key": "x" * 201}, {"subject_id": "s", "model": "m1"}, 422),
        ("requester", {}, {"subject_id": "s", "model": "nope"}, 404),  # the insert creates nothing
        ("requester", {"Authorization": "Token abc"}, {"subject_id": "s", "model": "m1"}, 401),
    ],
)
def test_what_the_fast_path_does_not_create_the_route_answers(committed_app, committed_model, paths, role, headers, body,
                                                              status):
    committed_model(committed_app.app, "m1")
    for who in ("requester", "operator", "auditor"):  # every token is in the cache from here on
        assert committed_app.get(URL, headers=committed_app.auth(who)).status_code == 200
    r = _post(committed_app, role=role, headers=headers, **body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert paths["fast"] == 0 and _count(committed_app) == 0


def test_a_body_not_declared_json_is_the_routes_415(committed_app, committed_model, paths):
    committed_model(committed_app.app, "m1")
    assert _post(committed_app, subject_id="warm", model="m1").status_code == 202
    r = committed_app.post(URL, content=b'{"subject_id": "s", "model": "m1"}',
                           headers=committed_app.auth("requester") | {"Content-Type": "text/plain"})
    assert r.status_code == 415 and _count(committed_app) == 1


def test_a_merge_is_the_routes_200(committed_app, committed_model, paths):
    committed_model(committed_app.app, "m1")
    first = _post(committed_app, subject_id="dup", model="m1")
    second = _post(committed_app, subject_id="dup", model="m1")
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.headers["lethe-outcome"] == "merged" and second.json()["id"] == first.json()["id"]
    assert _count(committed_app) == 1


def test_a_database_error_on_the_fast_path_leaves_the_create_to_the_route(committed_app, committed_model, paths,
                                                                          monkeypatch):
    committed_model(committed_app.app, "m1")
    assert _post(committed_app, subject_id="warm", model="m1").status_code == 202

    async def broken(*args, **kwargs):
        raise psycopg.OperationalError("connection lost")

    monkeypatch.setattr(repository, "insert_with_policy_on", broken)
    r = _post(committed_app, key="kx", subject_id="after-error", model="m1")
    assert r.status_code == 202 and r.headers["lethe-outcome"] == "created"
    assert paths["route"] == 2 and _count(committed_app) == 2


def test_switched_off_every_create_takes_the_route(engine, settings, committed_model, paths):
    from tests.conftest import ApiClient, _tokens, truncate_all  # noqa: PLC0415

    off = settings.model_copy(update={"api": settings.api.model_copy(update={"intake_fast_path": False})})
    truncate_all(engine)
    app = create_app(off)
    try:
        with ApiClient(app) as c:
            assert app.state.intake_pool is None
            with app.state.session_factory.begin() as s:
                c.tokens = _tokens(s)
            committed_model(app, "m1")
            for i in range(3):
                assert _post(c, subject_id=f"off-{i}", model="m1").status_code == 202
            assert paths == {"fast": 0, "route": 3}
    finally:
        truncate_all(engine)


def test_a_request_for_every_model_takes_the_strictest_policy_on_the_fast_path_too(committed_app, committed_model, paths):
    committed_model(committed_app.app, "auto", auto_approve=True, sla_days=40)
    committed_model(committed_app.app, "manual", auto_approve=False, sla_days=7)
    by_route = _post(committed_app, subject_id="all-1")
    by_fast = _post(committed_app, subject_id="all-2")
    assert paths == {"fast": 1, "route": 1}
    for r in (by_route, by_fast):
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["model"] is None and body["status"] == "awaiting_approval" and body["approved_by"] is None
        assert 6.99 < body["days_left"] <= 7


def test_a_database_error_on_the_fast_path_logs_no_raw_subject_id(committed_app, committed_model, paths, monkeypatch,
                                                                   caplog):
    """A PostgreSQL error's message and DETAIL ("Failing row contains (…)") can hold the row's
    raw subject_id: the fast path logs the error's class and SQLSTATE only."""
    committed_model(committed_app.app, "m1")
    assert _post(committed_app, subject_id="warm", model="m1").status_code == 202

    async def broken(*args, **kwargs):
        raise psycopg.errors.CheckViolation('new row violates check constraint; Failing row contains (raw-subject-771)')

    monkeypatch.setattr(repository, "insert_with_policy_on", broken)
    with caplog.at_level("WARNING", logger="lethe.intake"):
        r = _post(committed_app, subject_id="raw-subject-771", model="m1")
    assert r.status_code == 202 and paths["route"] == 2
    logged = caplog.text  # messages and any traceback
    assert "CheckViolation" in logged and "23514" in logged
    assert "raw-subject-771" not in logged


def test_a_database_error_the_route_cannot_handle_logs_no_raw_subject_id(committed_app, committed_model, paths, monkeypatch,
                                                                          caplog):
    """The route's 500 (the fallback of the fast path's database error): SQLAlchemy's message
    carries the statement's parameters and the driver's DETAIL, both with the raw subject_id;
    the log keeps the stack, the error's class and SQLSTATE, not the message."""
    import sqlalchemy.exc  # noqa: PLC0415

    committed_model(committed_app.app, "m1")
    assert _post(committed_app, subject_id="warm", model="m1").status_code == 202
    raw = "raw-subject-772"
    driver = psycopg.errors.CheckViolation(f"new row violates check constraint; Failing row contains ({raw})")

    async def broken_fast(*args, **kwargs):
        raise driver

    def broken_route(*args, **kwargs):
        raise sqlalchemy.exc.IntegrityError("INSERT INTO deletion_requests …", {"subject_id": raw}, driver)

    monkeypatch.setattr(repository, "insert_with_policy_on", broken_fast)
    monkeypatch.setattr(router, "_create_in_one_transaction", broken_route)
    committed_app._transport.raise_server_exceptions = False
    try:
        with caplog.at_level("WARNING"):
            r = _post(committed_app, subject_id="raw-subject-772", model="m1")
    finally:
        committed_app._transport.raise_server_exceptions = True
    assert r.status_code == 500 and "raw-subject-772" not in r.text
    assert "broken_route" in caplog.text and "CheckViolation" in caplog.text and "23514" in caplog.text
    assert "raw-subject-772" not in caplog.text


@pytest.mark.parametrize(("recycle", "lifetime"), [(1800, 1800.0), (-1, float("inf"))])
def test_the_pools_connection_lifetime_follows_pool_recycle(settings, recycle, lifetime):
    """``pool_recycle_s`` -1 is SQLAlchemy's "never": psycopg_pool would read it as connections
    already expired (closed and reopened on every return)."""
    import asyncio  # noqa: PLC0415

    from service.deletion_request import intake  # noqa: PLC0415

    s = settings.model_copy(update={"database": settings.database.model_copy(update={"pool_recycle_s": recycle})})

    async def lifetime_of() -> float:
        pool = await intake.open_pool(s)
        try:
            return pool.max_lifetime
        finally:
            await pool.close()

    assert asyncio.run(lifetime_of()) == lifetime


def _intake_backends(engine) -> int:
    from sqlalchemy import text  # noqa: PLC0415

    from service.deletion_request import intake  # noqa: PLC0415

    with engine.connect() as conn:
        return conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"),
                           {"n": intake.APPLICATION_NAME})


def test_a_startup_that_fails_after_the_pool_opened_leaves_no_pool_open(engine, settings, monkeypatch):
    """The lifespan closes the intake pool (and the manifest listener) when a later startup step
    raises, not only at shutdown."""
    import time  # noqa: PLC0415

    from service import main  # noqa: PLC0415
    from service.deletion_request import intake  # noqa: PLC0415
    from service.model_registry import manifest_cache  # noqa: PLC0415
    from tests.conftest import ApiClient  # noqa: PLC0415

    opened, seen = [], {}
    real_open = intake.open_pool

    async def open_and_wait(s):
        pool = await real_open(s)
        await pool.wait(timeout=10)  # its connections exist before startup fails
        opened.append(pool)
        return pool

    def failing_rekey(factory):
        seen["backends"] = _intake_backends(engine)
        seen["listeners"] = len(manifest_cache._live)
        raise RuntimeError("rekey failed")

    monkeypatch.setattr(intake, "open_pool", open_and_wait)
    monkeypatch.setattr(main, "_rekey_audit_chain", failing_rekey)
    before = len(manifest_cache._live)
    app = create_app(settings)
    with pytest.raises(RuntimeError, match="rekey failed"), ApiClient(app):
        pass
    assert len(opened) == 1 and seen["backends"] >= intake.IDLE_CONNECTIONS and seen["listeners"] == before + 1
    assert opened[0].closed
    assert app.state.manifests is not None and app.state.manifests not in manifest_cache._live
    deadline = time.monotonic() + 5
    while _intake_backends(engine) and time.monotonic() < deadline:  # a backend ends just after its close
        time.sleep(0.05)
    assert _intake_backends(engine) == 0


def _closed_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens on it once closed


def _run(app, coro):
    """Run a coroutine on the app's event loop (the test client's portal)."""
    return app.portal.call(lambda: coro)


def test_with_the_database_unreachable_the_route_answers_at_once_and_nothing_is_lost(committed_app, committed_model,
                                                                                     paths, settings, monkeypatch):
    """An outage seen by the fast path (its pool pointed at a port nothing listens on): the first
    create waits at most ``POOL_WAIT_S`` on the pool, then the route answers it; the next ones go
    straight to the route for ``DOWN_S``; after that the fast path tries its pool again."""
    import time  # noqa: PLC0415

    from sqlalchemy.engine import make_url  # noqa: PLC0415

    from service.deletion_request import intake  # noqa: PLC0415

    monkeypatch.setattr(intake, "DOWN_S", 3.0)
    committed_model(committed_app.app, "m1")
    assert _post(committed_app, subject_id="warm", model="m1").status_code == 202  # the route; token cached
    assert _post(committed_app, subject_id="warm-2", model="m1").status_code == 202 and paths["fast"] == 1

    state = committed_app.app.state
    good = state.intake_pool
    down_url = make_url(settings.database.url).set(port=_closed_port()).render_as_string(hide_password=False)
    down = settings.model_copy(update={"database": settings.database.model_copy(update={"url": down_url})})
    state.intake_pool = _run(committed_app, intake.open_pool(down))
    ids, took = [], []
    try:
        for i in range(3):
            t0 = time.monotonic()
            r = _post(committed_app, key=f"out-{i}", subject_id=f"out-{i}", model="m1")
            took.append(time.monotonic() - t0)
            assert r.status_code == 202 and r.headers["lethe-outcome"] == "created", r.text
            ids.append(r.json()["id"])
        assert paths == {"fast": 1, "route": 4}
        assert took[0] < 3.5, took  # one pool wait (POOL_WAIT_S, 2 s), then the route
        assert max(took[1:]) < 0.75, took  # no pool wait while the fast path is marked down
    finally:
        _run(committed_app, state.intake_pool.close())
        state.intake_pool = good

    # The database is back for the fast path: after DOWN_S it creates again.
    time.sleep(max(0.0, state.intake_down_until - time.monotonic()) + 0.05)
    r = _post(committed_app, key="back", subject_id="back", model="m1")
    assert r.status_code == 202 and paths == {"fast": 2, "route": 4}
    ids.append(r.json()["id"])
    with state.session_factory() as s:
        rows = s.scalars(select(DeletionRequest)).all()
        assert len(rows) == 6 and {str(x.id) for x in rows} >= set(ids)
        assert len({x.subject_id for x in rows}) == 6
        events = s.scalars(select(WebhookEvent)).all()
        assert sorted(e.data["request_id"] for e in events) == sorted(str(x.id) for x in rows)


def test_a_full_pool_is_not_taken_for_an_outage(committed_app, committed_model, paths, settings, monkeypatch):
    """A create that times out waiting while every connection is in use goes to the route, and
    the fast path stays on for the next one."""
    from service.deletion_request import intake  # noqa: PLC0415

    monkeypatch.setattr(intake, "POOL_WAIT_S", 0.3)
    committed_model(committed_app.app, "m1")
    assert _post(committed_app, subject_id="warm", model="m1").status_code == 202
    state = committed_app.app.state
    good = state.intake_pool
    one = settings.model_copy(update={"api": settings.api.model_copy(update={"intake_connections": 1})})
    state.intake_pool = small = _run(committed_app, intake.open_pool(one))
    try:
        _run(committed_app, small.wait(timeout=10))
        held = _run(committed_app, small.getconn())
        r = _post(committed_app, subject_id="busy", model="m1")
        assert r.status_code == 202 and paths == {"fast": 0, "route": 2}
        assert getattr(state, "intake_down_until", 0.0) == 0.0
        _run(committed_app, small.putconn(held))
        assert _post(committed_app, subject_id="free", model="m1").status_code == 202 and paths["fast"] == 1
    finally:
        _run(committed_app, small.close())
        state.intake_pool = good
    assert _count(committed_app) == 3
