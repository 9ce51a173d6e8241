"""The HTTP application. ``create_app()`` builds everything in the lifespan; no torch here."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from service.core.config import Settings, get_settings
from service.core.db import make_engine, make_session_factory
from service.core.errors import install_error_handlers
from service.core.limits import BodySizeLimitMiddleware, DuplicateJsonKeysMiddleware, HeaderSizeLimitMiddleware
from service.job.checkpoint import CHECKPOINT_PATH
from service.core.storage import StorageUnavailable, make_store
from service.deletion_request import intake
from workers.unlearning.methods import config_classes

log = logging.getLogger("lethe.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    from service.audit import keys as audit_keys

    audit_keys.configure(settings.audit)  # fails fast on a malformed signing key

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.method_configs = config_classes()  # every method's config, found once (torch-free)
        engine = make_engine(settings.database)
        app.state.engine = engine
        from service.model_registry.manifest_cache import ManifestCache

        # Everything opened from here on is closed in the ``finally``, also when startup fails
        # after it opened (a rekey or storage check that raises leaves no pool or listener behind).
        app.state.manifests = app.state.intake_pool = None
        try:
            app.state.session_factory = make_session_factory(engine)
            app.state.store = make_store(settings.storage)
            app.state.manifests = ManifestCache(engine) if settings.api.manifest_cache else None
            app.state.intake_pool = await intake.open_pool(settings)
            app.state.intake_session_factory = app.state.session_factory
            _rekey_audit_chain(app.state.session_factory)
            # A store that cannot be used is said at startup, clearly; /readyz keeps saying which.
            problem = await anyio.to_thread.run_sync(_check_storage, app.state.store)
            if problem != "ok":
                log.error("artifact store unavailable: %s", problem)
            yield
        finally:
            if app.state.manifests is not None:
                app.state.manifests.close()
            if app.state.intake_pool is not None:
                await app.state.intake_pool.close()
            engine.dispose()

    app = FastAPI(
        title="Lethe",
        version="0.1.0",
        description="Makes trained models forget people: deletion requests, forgetting jobs, clean versions.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    # Outermost last: header size, then body size, then duplicate JSON keys, then the intake
    # fast path (it answers common creates itself, after every limit), then (innermost, in front
    # of the router, so every limit above applies to it) manifest-cache hits.
    if settings.api.manifest_cache and settings.api.manifest_fast_path:
        from service.model_registry.fast_path import ManifestFastPath

        app.add_middleware(ManifestFastPath)
    app.add_middleware(intake.IntakeFastPath)
    app.add_middleware(DuplicateJsonKeysMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.api.max_body_bytes,
                       per_path={CHECKPOINT_PATH: settings.api.max_checkpoint_bytes})
    app.add_middleware(HeaderSizeLimitMiddleware, max_bytes=settings.api.max_header_bytes)

    from service.audit.router import router as audit_router
    from service.client.router import router as client_router
    from service.deletion_request.router import router as deletion_router
    from service.job.checkpoint import router as checkpoint_router
    from service.job.router import router as job_router
    from service.model_registry.router import router as registry_router
    from service.subject.router import router as subject_router
    from service.metrics.router import router as metrics_router
    from service.opendsr.router import router as opendsr_router
    from service.webhook.router import router as webhook_router

    app.include_router(deletion_router)
    app.include_router(registry_router)
    app.include_router(job_router)
    app.include_router(checkpoint_router)
    app.include_router(audit_router)
    app.include_router(subject_router)
    app.include_router(metrics_router)
    app.include_router(client_router)
    app.include_router(webhook_router)
    app.include_router(opendsr_router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz(request: Request) -> Response:
        checks: dict[str, str] = {}
        ok = True
        try:
            with request.app.state.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - readiness reports any failure
            ok = False
            checks["database"] = f"error: {type(exc).__name__}"
        broker = _check_broker(settings)
        checks["broker"] = broker
        ok = ok and broker == "ok"
        storage = _check_storage(request.app.state.store)
        checks["storage"] = storage
        ok = ok and storage == "ok"
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    from service.core import openapi
    from service.model_registry.schemas import SamplesJson

    openapi.install(app, extra_models=(SamplesJson,))

    from service.admin.app import create_admin_app

    admin = create_admin_app(settings)
    admin.state.parent = app
    app.mount("/admin", admin)
    return app


def _rekey_audit_chain(factory) -> None:
    """Once, after the upgrade to the keyed chain: re-link the old unkeyed events with the HMAC
    key (a no-op, one indexed query, on every later start)."""
    from service.audit.service import rekey_legacy_chain, sign_after_key_rotation

    with factory.begin() as session:
        n = rekey_legacy_chain(session)
        sign_after_key_rotation(session)
    if n:
        log.warning("audit chain: %d events of the old unkeyed chain re-linked with the HMAC key", n)


def _check_storage(store) -> str:
    try:
        store.check()
        return "ok"
    except StorageUnavailable as exc:
        return f"error: {exc}"
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure
        return f"error: {type(exc).__name__}: {exc}"


def _check_broker(settings: Settings) -> str:
    url = settings.broker.url
    if not url.startswith(("redis://", "rediss://")):
        return "ok"  # embedded mode: the in-memory transport lives in this process
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
        return "ok"
    except Exception as exc:  # noqa: BLE001
        return f"error: {type(exc).__name__}"
