"""Models, sample ingestion, versions (manifest, long-poll, weights) and aliases."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import datetime
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session

from service.core.db import get_session, read_session
from service.core.errors import BadRequest, RangeNotSatisfiable, UnsupportedMediaType, ValidationFailed
from service.client.tokens import Principal, authenticate, cached_principal, require
from service.core.types import LIMIT_DESCRIPTION, LIMIT_MAX, PastDateTime
from service.model_registry import classes, service, uploads
from service.model_registry.manifest_cache import ManifestCache
from service.model_registry.schemas import (
    AliasesRead,
    AliasMove,
    ClassSubjectsResult,
    ClassSubjectsUpload,
    IngestResult,
    ModelCreate,
    ModelPage,
    ModelRead,
    SamplesJson,
    VersionManifest,
    VersionPage,
)
from service.models import Role

router = APIRouter(tags=["models"])
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
# Roles (DESIGN §10): model metadata is readable by every role (a requester names models in
# its requests); manifests by serving, operators and auditors; weights by serving only; only
# admins register models and ingest samples; operators move aliases (promote).
_read = require(Role.operator, Role.serving, Role.auditor, Role.requester)
_serve = require(Role.serving, Role.operator, Role.auditor)  # also fast_path.py's check
_weights = require(Role.serving)
_admin = require()
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@router.post("/v1/models", response_model=ModelRead, status_code=201)
def register_model(body: ModelCreate, request: Request, response: Response, session: SessionDep,
                   who: Principal = Depends(_admin)) -> ModelRead:
    model = service.register(session, body, who.actor, request.app.state.settings)
    response.headers["Location"] = f"/v1/models/{model.name}"
    return service.to_read(session, model)


def _limit(request: Request, limit: int | None) -> int:
    api = request.app.state.settings.api
    return min(limit or api.page_size_default, api.page_size_max)


def _secret(request: Request) -> str:
    return request.app.state.settings.security.secret_key


@router.get("/v1/models", response_model=ModelPage)
def list_models(request: Request, session: SessionDep, cursor: str | None = Query(None, max_length=512),
                limit: int | None = Query(None, ge=1, le=LIMIT_MAX, description=LIMIT_DESCRIPTION), _: Principal = Depends(_read)) -> ModelPage:
    """Registered models, newest first (any role)."""
    return service.page_models(session, secret=_secret(request), cursor=cursor, limit=_limit(request, limit))


@router.get("/v1/models/{name}", response_model=ModelRead)
def get_model(name: str, session: SessionDep, _: Principal = Depends(_read)) -> ModelRead:
    return service.to_read(session, service.get_model(session, name))


@router.post("/v1/models/{name}/samples", response_model=IngestResult, status_code=201)
async def ingest_samples(
    name: str,
    request: Request,
    session: SessionDep,
    format: str | None = None,
    consent_renewed_at: Annotated[PastDateTime | None, Query(description="When the subjects renewed their consent (not in the future)")] = None,
    who: Principal = Depends(_admin),
) -> IngestResult:
    """Ingest samples (operator). The body format follows ``Content-Type`` (else ``415``):

    * ``application/json``: ``{"samples": [{"subject_id", "split", "label", "x"}], "consent_renewed_at"?}``;
    * ``application/x-npz``: arrays ``x`` (n, *input_shape) float, ``labels`` (n,) int,
      ``subject_ids`` (n,) str, ``split`` (n,) str or one string for all rows;
    * ``application/vnd.safetensors`` (or ``application/octet-stream`` with ``?format=safetensors``):
      tensors ``x`` and ``labels``, metadata ``subject_ids`` (JSON list) and ``split`` (string or JSON list).

    Everything is validated before anything is written (``422`` naming the first bad row).
    ``409 subject-deleted``: a subject was deleted from this model and the upload does not carry a
    ``consent_renewed_at`` later than the deletion. ``409 subject-deletion-pending``: a subject has
    an open deletion request covering this model (received, awaiting approval, queued or
    processing); upload after it is completed (with renewed consent) or cancelled. The inputs go
    into one chunk file (safetensors, tensor ``x`` float32), the rows into ``samples``.
    """
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    body = await request.body()
    settings = request.app.state.settings

    def work() -> IngestResult:
        # The request's session (the one that authenticated it); committed before the response.
        # Parsing and validating happen between two transactions, so the write transaction (on
        # SQLite: the database's one write lock) lasts only as long as the insert itself.
        model = service.get_model(session, name)
        session.commit()
        consent = consent_renewed_at
        if media == "application/json":
            try:
                doc = SamplesJson.model_validate_json(body)
            except ValidationError as exc:
                errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"], "kind": e["type"]} for e in exc.errors()]
                if any(e["kind"] == "json_invalid" for e in errors):
                    raise BadRequest("Request body is not valid JSON") from None
                raise ValidationFailed("Invalid samples: " + "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]), errors=errors) from None
            parsed = uploads.parse_json_rows(doc.samples, model.input_shape, model.num_classes)
            consent = doc.consent_renewed_at or consent
        elif media == "application/x-npz":
            parsed = uploads.parse_npz(body, model.input_shape, model.num_classes)
        elif media == "application/vnd.safetensors" or (media == "application/octet-stream" and format == "safetensors"):
            parsed = uploads.parse_safetensors(body, model.input_shape, model.num_classes)
        else:
            raise UnsupportedMediaType(
                f"Unsupported Content-Type {media or 'none'!r}",
                accepted=["application/json", "application/x-npz", "application/vnd.safetensors"],
            )
        model = service.get_model(session, name)
        n, chunk_id, by_split = service.ingest(session, request.app.state.store, settings.security.secret_key, model, parsed, consent, who.actor)
        return IngestResult(inserted=n, chunk_id=chunk_id, by_split=by_split)

    return await anyio.to_thread.run_sync(work)


@router.post("/v1/models/{name}/class-subjects", response_model=ClassSubjectsResult, status_code=201)
def map_class_subjects(name: str, body: ClassSubjectsUpload, request: Request, session: SessionDep,
                       who: Principal = Depends(_admin)) -> ClassSubjectsResult:
    """Say which subject each class is (admin), on a model registered with
    ``subjects_are_classes: true``: ``{"classes": [{"label", "subject_id"}]}``. Stored as subject
    keys; a deletion request for such a subject then forgets the whole class (kind ``class``).

    Checked before anything is written: ``409 subjects-not-classes`` (the model was not
    registered so); ``422 no-class-forgetting`` (its method cannot forget a class); ``422
    unknown-class-label`` (outside the model's classes, or no training samples carry it:
    never ingested or already forgotten); ``409 class-mapping-conflict`` (a label or a subject
    twice, or already mapped otherwise; the same pair again is unchanged); ``409
    class-subject-mismatch`` (the label has samples of other subjects, or the subject of other
    labels)."""
    model = service.get_model(session, name)
    service.ensure_not_retired(model)
    pairs = [(row.label, row.subject_id) for row in body.classes]
    new, unchanged, total = classes.map_subjects(session, _secret(request), model, pairs, who.actor)
    return ClassSubjectsResult(mapped=new, unchanged=unchanged, classes_mapped=total)


# ----------------------------------------------------------------------------- versions
@router.get("/v1/models/{name}/versions", response_model=VersionPage)
def list_versions(name: str, request: Request, session: SessionDep, cursor: str | None = Query(None, max_length=512),
                  limit: int | None = Query(None, ge=1, le=LIMIT_MAX, description=LIMIT_DESCRIPTION), _: Principal = Depends(_serve)) -> VersionPage:
    """Versions (revoked ones included, with their state), newest first."""
    model = service.get_model(session, name)
    return service.page_versions(session, model, secret=_secret(request), cursor=cursor, limit=_limit(request, limit))


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags or f"W/{etag}" in tags


def manifest_cache_for(app, ref: str) -> ManifestCache | None:
    """The app's manifest cache when it may hold ``ref`` (an alias or a version number), else None."""
    cache = getattr(app.state, "manifests", None)
    if cache is not None and (ref in service.ALIASES or (ref.isascii() and ref.isdigit() and len(ref) <= 9)):
        return cache
    return None


def cached_answer(cache: ManifestCache | None, name: str, ref: str, if_none_match: str | None,
                  wait: float | None) -> tuple[str, bytes | None] | None:
    """What the cache alone answers: ``(etag, body)`` for a 200, ``(etag, None)`` for a 304, or
    None (a miss, or a long-poll on an alias whose ETag the client already holds: the database)."""
    hit = cache.get(name, ref) if cache is not None else None
    if hit is None:
        return None
    etag, body = hit
    if not _etag_matches(if_none_match, etag):
        return etag, body
    if wait is None or ref not in service.ALIASES:
        return etag, None
    return None


async def _pause(request: Request, deadline: float) -> bool:
    """Sleep up to 0.2 s between long-poll checks; False once the client has gone away, so an
    abandoned poll stops querying the database instead of running to its deadline."""
    if await request.is_disconnected():
        return False
    await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    return True


@router.get("/v1/models/{name}/versions/{ref}", response_model=VersionManifest)
async def get_version(
    name: str,
    ref: str,
    request: Request,
    wait: float | None = Query(None, gt=0),
    if_none_match: str | None = Header(None),
) -> Response:
    """The manifest. ``If-None-Match`` → 304; with ``?wait=N`` on an alias, long-poll until the
    alias moves (200) or N seconds pass (304). The event loop never blocks: each check is a short
    transaction in a worker thread.

    The hot path of polling model servers (DESIGN §9: p99 ≤ 5 ms): the token (from the token
    cache) and the manifest (from the manifest cache) are checked on the event loop, with no
    thread hop and no database; only a miss takes a worker thread and a read session. Same
    roles as the ``_serve`` dependency."""
    principal = cached_principal(request)
    if principal is None:
        def lookup() -> Principal:
            with read_session(request.app.state.session_factory) as s:
                return authenticate(request, s)

        principal = await anyio.to_thread.run_sync(lookup)
    _serve(principal)
    settings = request.app.state.settings
    if wait is not None and wait > settings.api.long_poll_max_s:
        raise ValidationFailed(f"wait must be at most {settings.api.long_poll_max_s} seconds")
    # The in-process cache (manifest_cache.py) answers most requests without the database (and
    # without a session, whose set-up and close were a measurable share of a hit). Most hits
    # never get here: fast_path.py answers them ahead of FastAPI's routing, by cached_answer too.
    cache = manifest_cache_for(request.app, ref)
    answer = cached_answer(cache, name, ref, if_none_match, wait)
    if answer is not None:
        etag, body = answer
        if body is not None:
            return Response(body, media_type="application/json", headers={"ETag": etag, "Cache-Control": "no-cache"})
        return Response(status_code=304, headers={"ETag": etag})
    with read_session(request.app.state.session_factory) as session:
        return await _manifest_response(request, session, cache, name, ref, wait, if_none_match)


async def _manifest_response(request: Request, session: Session, cache: ManifestCache | None, name: str, ref: str,
                             wait: float | None, if_none_match: str | None) -> Response:
    # Each check is its own short read transaction on the request's session (a read session:
    # no lock on SQLite), ended at once so that the next check sees newer commits.
    def check():
        token = cache.token() if cache is not None else None
        try:
            model = service.get_model(session, name)
            v = service.live_or_gone(service.resolve_version(session, model, ref), model)
            doc, etag = service.manifest_with_etag(session, model, v)
            body = json.dumps(doc.model_dump(mode="json")).encode()
        finally:
            session.rollback()
        if cache is not None:
            cache.put(token, name, ref, etag, body)
        return etag, body

    def quick_etag():
        try:
            return service.current_etag(session, name, ref)
        finally:
            session.rollback()

    deadline = time.monotonic() + (wait or 0)
    if if_none_match:
        # Revalidation fast path: one query; unchanged and no long-poll -> 304 without a manifest.
        etag = await anyio.to_thread.run_sync(quick_etag)
        while etag is not None and _etag_matches(if_none_match, etag):
            if wait is None or ref not in service.ALIASES or time.monotonic() >= deadline:
                return Response(status_code=304, headers={"ETag": etag})
            if not await _pause(request, deadline):
                return Response(status_code=304, headers={"ETag": etag})
            etag = await anyio.to_thread.run_sync(quick_etag)
    while True:
        etag, body = await anyio.to_thread.run_sync(check)
        if not _etag_matches(if_none_match, etag):
            return Response(body, media_type="application/json", headers={"ETag": etag, "Cache-Control": "no-cache"})
        if wait is None or ref not in service.ALIASES or time.monotonic() >= deadline:
            return Response(status_code=304, headers={"ETag": etag})
        if not await _pause(request, deadline):
            return Response(status_code=304, headers={"ETag": etag})


@router.get("/v1/models/{name}/versions/{ref}/weights")
def get_weights(name: str, ref: str, request: Request, session: SessionDep,
                range_: str | None = Header(None, alias="range"), if_none_match: str | None = Header(None),
                _: Principal = Depends(_weights)) -> Response:
    model = service.get_model(session, name)
    v = service.live_or_gone(service.resolve_version(session, model, ref), model)
    etag = f'"{v.sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
    if _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    store = request.app.state.store
    stat = store.stat(v.artifact_uri) if v.artifact_uri else None
    if stat is None:
        raise service.VersionRevoked(f"The weights of version {v.number} are no longer stored")
    size = stat[0]
    start, end = 0, size - 1
    status = 200
    if range_:
        m = _RANGE.match(range_.strip())
        if not m or (not m.group(1) and not m.group(2)):
            raise RangeNotSatisfiable(f"Unsupported Range header {range_!r}; use a single 'bytes=a-b'", headers={"Content-Range": f"bytes */{size}"})
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:
            start = max(size - int(m.group(2)), 0)
        if start > end or start >= size:
            raise RangeNotSatisfiable(f"Range {range_!r} is outside the file of {size} bytes", headers={"Content-Range": f"bytes */{size}"})
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    # Streamed from the store (a ranged GET on S3) after the checks above: tokens, 410, ETag.
    return StreamingResponse(store.iter_range(v.artifact_uri, start, end), status_code=status, media_type="application/vnd.safetensors", headers=headers)


# ----------------------------------------------------------------------------- aliases
@router.get("/v1/models/{name}/aliases", response_model=AliasesRead)
def get_aliases(name: str, session: SessionDep, _: Principal = Depends(_serve)) -> AliasesRead:
    return service.aliases(session, service.get_model(session, name))


@router.post("/v1/models/{name}/aliases/{alias}", response_model=AliasesRead)
def move_alias(name: str, alias: str, body: AliasMove, session: SessionDep, who: Principal = Depends(require(Role.operator))) -> AliasesRead:
    model = service.get_model(session, name)
    version = service.resolve_version(session, model, str(body.version))
    service.move_alias(session, model, alias, version, who.actor)
    return service.aliases(session, model)
