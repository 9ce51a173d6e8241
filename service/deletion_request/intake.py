"""The intake fast path: ``POST /v1/deletion-requests`` answered on the event loop (DESIGN §9).

A pure-ASGI layer, innermost of the application's middlewares (so the header, body and
duplicate-key limits have already run), that answers the common create itself: a JSON body
that validates, a bearer token found in this process's token cache whose role may file, and an
insert that creates a new row. It runs the same one-statement insert as the route (request row
and webhook event row in one statement, :func:`repository.insert_with_policy_on`), on an
autocommit psycopg connection of a small async pool as a server-side prepared statement, so a
``202`` is still a committed row. No thread hop, no SQLAlchemy and no FastAPI routing or
parameter solving on this path; profiling under load showed those as most of the server's
CPU per create.

Everything else goes to the application unchanged, with the body replayed: a token not in the
cache (the route looks it up and caches it), a role that may not file, a body or header that
does not validate, a replay, a merge or an unknown model (the insert creates nothing), a
database error. The route then answers as it always did (its own problem responses, the
portable path), so what a client can observe is the route's behaviour.

During a database outage the fast path gets out of the way: a create waits at most
``POOL_WAIT_S`` for a connection (each connection attempt bounded by ``CONNECT_TIMEOUT_S``), and
after a connection error every create goes straight to the route for ``DOWN_S`` before the pool is
tried again. A timeout because every connection is busy (load) does not count as an outage.

Active only on PostgreSQL, with ``api.intake_fast_path`` on, and while the application's session
factory is the one its lifespan built (a test that rebinds it to a rolled-back connection gets
the route).
"""

from __future__ import annotations

import logging
import time

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from starlette.types import ASGIApp, Receive, Scope, Send

from service.client.tokens import may, principal_from_cache
from service.core.config import Settings
from service.core.limits import is_json_media, read_body, single_headers
from service.core.security import subject_key
from service.deletion_request import repository as repo
from service.deletion_request import service
from service.deletion_request.schemas import DeletionRequestCreate
from service.models import Role

log = logging.getLogger("lethe.intake")

PATH = "/v1/deletion-requests"
IDEMPOTENCY_KEY_MAX = 200  # the route's Header(max_length=...)
_HEADERS = frozenset((b"content-type", b"authorization", b"idempotency-key"))  # each at most once, else the route
# How long a create waits for one of the pool's connections (``api.intake_connections``; creates
# beyond it wait on the event loop) before the route is left to answer. Short: during a database
# outage a longer wait only delays the route's own answer (its 503 or its 202).
POOL_WAIT_S = 2.0
# A bound on opening one of the pool's connections (libpq's ``connect_timeout``; 2 s is its least).
CONNECT_TIMEOUT_S = 2
# After the pool could not give a connection (an outage, not a full pool), creates go straight
# to the route for this long without waiting on the pool; the next create then tries it again.
DOWN_S = 5.0
IDLE_CONNECTIONS = 4
APPLICATION_NAME = "lethe-intake"  # the pool's connections in pg_stat_activity


async def open_pool(settings: Settings) -> AsyncConnectionPool | None:
    """The fast path's connections, or None where it does not run (SQLite, switched off)."""
    url = make_url(settings.database.url)
    if not settings.api.intake_fast_path or url.get_backend_name() != "postgresql":
        return None
    db = settings.database
    pool = AsyncConnectionPool(
        url.set(drivername="postgresql").render_as_string(hide_password=False),
        min_size=min(IDLE_CONNECTIONS, settings.api.intake_connections),  # grows under load, shrinks when idle
        max_size=settings.api.intake_connections,
        kwargs={"autocommit": True, "application_name": APPLICATION_NAME, "connect_timeout": CONNECT_TIMEOUT_S},
        check=AsyncConnectionPool.check_connection if db.pool_pre_ping else None,
        max_lifetime=float(db.pool_recycle_s) if db.pool_recycle_s >= 0 else float("inf"),  # -1: SQLAlchemy's "never"
        timeout=POOL_WAIT_S,
        name="lethe-intake",
        open=False,
    )
    await pool.open(wait=False)
    return pool


class IntakeFastPath:
    """The middleware (see the module docstring); ``create_app`` adds it innermost."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != scope.get("root_path", "") + PATH:
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        pool = getattr(state, "intake_pool", None)
        if (pool is None or state.session_factory is not state.intake_session_factory
                or time.monotonic() < getattr(state, "intake_down_until", 0.0)):
            await self.app(scope, receive, send)
            return
        body, replayed = await read_body(receive)
        answer = None if body is None else await _create(state, pool, scope, body)
        if answer is None:
            await self.app(scope, replayed, send)
            return
        content, location = answer
        await send({
            "type": "http.response.start",
            "status": 202,
            "headers": [
                (b"content-length", str(len(content)).encode()),
                (b"content-type", b"application/json"),
                (b"location", location),
                (b"lethe-outcome", b"created"),
            ],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": content})


async def _create(state, pool: AsyncConnectionPool, scope: Scope, body: bytes) -> tuple[bytes, bytes] | None:
    """(JSON body, Location) of a created request; None: the route is to answer."""
    headers = single_headers(scope["headers"], _HEADERS)
    if headers is None:
        return None
    content_type, authorization = headers.get(b"content-type"), headers.get(b"authorization")
    if content_type is None or authorization is None or not is_json_media(content_type):
        return None
    idempotency_key = headers[b"idempotency-key"].decode("latin-1") if b"idempotency-key" in headers else None
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= IDEMPOTENCY_KEY_MAX:
        return None
    principal = principal_from_cache(authorization.decode("latin-1"))
    if principal is None or not may(principal, Role.requester):
        return None
    try:
        data = DeletionRequestCreate.model_validate_json(body)
    except ValidationError:
        return None
    sk = subject_key(state.settings.security.secret_key, data.subject_id)
    key = service.scoped_idempotency_key(idempotency_key, principal.client_id)
    values = service.one_statement_values(sk, data, key, principal.client_id)
    try:
        async with pool.connection() as conn:
            got = await repo.insert_with_policy_on(conn, values, **service.one_statement_policy(data))
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.OperationalError) and not _full(pool, exc):
            state.intake_down_until = time.monotonic() + DOWN_S  # no connection: the route answers for now
        # The route tries again on its own connection and answers (a retry of a create that did
        # commit is a replay or a merge there, never a duplicate). The error's class and SQLSTATE
        # only: its message and DETAIL ("Failing row contains (…)") can hold the raw subject_id.
        log.warning("intake fast path: database error %s (SQLSTATE %s), the route answers",
                    type(exc).__name__, exc.sqlstate)
        return None
    if got is None:
        return None
    result = service.one_statement_result(values, data, got)
    return result.request.model_dump_json().encode(), f"{PATH}/{result.request.id}".encode()


def _full(pool: AsyncConnectionPool, exc: psycopg.Error) -> bool:
    """A wait that timed out because every connection the pool may hold is in use (load, not an
    outage: the fast path stays on)."""
    if not isinstance(exc, PoolTimeout):
        return False
    stats = pool.get_stats()
    return stats["pool_size"] >= stats["pool_max"] and stats["pool_available"] == 0
