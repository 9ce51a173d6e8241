"""Errors as ``application/problem+json`` (RFC 9457) with a stable ``type``.

Every domain error subclasses :class:`ProblemError`; FastAPI's own validation errors and
HTTP exceptions are mapped to the same shape, so a client never sees another error format.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("lethe.errors")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://lethe.dev/problems/"


class ProblemError(Exception):
    status: ClassVar[int] = 400
    type: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.extra = extra

    def to_body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class BadRequest(ProblemError):
    status, type, title = 400, "bad-request", "Bad request"


class ValidationFailed(ProblemError):
    status, type, title = 422, "validation-error", "Validation failed"


class InvalidCursor(ProblemError):
    status, type, title = 400, "invalid-cursor", "Invalid cursor"


class InvalidTensor(ProblemError):
    status, type, title = 422, "invalid-tensor", "Invalid tensor data"


class Unauthenticated(ProblemError):
    status, type, title = 401, "unauthenticated", "Missing or invalid bearer token"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ProblemError):
    status, type, title = 403, "forbidden", "Role not allowed"


class NotFound(ProblemError):
    status, type, title = 404, "not-found", "Not found"


class ModelNotFound(NotFound):
    type, title = "model-not-found", "Unknown model"


class Conflict(ProblemError):
    status, type, title = 409, "conflict", "Conflict"


class IllegalTransition(Conflict):
    type, title = "illegal-transition", "Illegal status transition"


class SubjectTombstoned(Conflict):
    type, title = "subject-deleted", "Subject was deleted from this model"


class Gone(ProblemError):
    status, type, title = 410, "gone", "Gone"


class PayloadTooLarge(ProblemError):
    status, type, title = 413, "payload-too-large", "Request body too large"


class UnsupportedMediaType(ProblemError):
    status, type, title = 415, "unsupported-media-type", "Unsupported media type"


class RangeNotSatisfiable(ProblemError):
    status, type, title = 416, "range-not-satisfiable", "Range not satisfiable"


class HeadersTooLarge(ProblemError):
    status, type, title = 431, "headers-too-large", "Request header fields too large"


class DatabaseBusy(ProblemError):
    status, type, title = 503, "database-busy", "Database busy"


def problem_response(err: ProblemError, request: Request | None = None) -> JSONResponse:
    return JSONResponse(
        err.to_body(str(request.url.path) if request is not None else None),
        status_code=err.status,
        media_type=PROBLEM_JSON,
        headers=err.headers,
    )


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ())]
        out.append({"field": ".".join(loc), "message": e.get("msg", ""), "kind": e.get("type", "")})
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        if any(e["kind"] == "json_invalid" for e in errors):
            err: ProblemError = BadRequest("Request body is not valid JSON", errors=errors)
            err_type = "malformed-json"
            body = err.to_body(request.url.path)
            body["type"] = TYPE_BASE + err_type
            return JSONResponse(body, status_code=400, media_type=PROBLEM_JSON)
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem_response(ValidationFailed(f"Invalid request: {summary}", errors=errors), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = ProblemError(str(exc.detail), headers=getattr(exc, "headers", None))
        body = err.to_body(request.url.path)
        body.update({"status": exc.status_code, "title": _TITLES.get(exc.status_code, "Error")})
        body["type"] = TYPE_BASE + _TYPES.get(exc.status_code, "http-error")
        return JSONResponse(body, status_code=exc.status_code, media_type=PROBLEM_JSON, headers=err.headers)

    @app.exception_handler(OperationalError)
    async def _operational(request: Request, exc: OperationalError) -> JSONResponse:
        # SQLite (embedded mode): a writer waited busy_timeout for the write lock. Reads never
        # wait (WAL, no lock at BEGIN); a write may, and then says so and asks for a retry.
        if _is_busy(exc):
            log.warning("database busy on %s %s", request.method, request.url.path)
            return problem_response(
                DatabaseBusy("The database is busy with another write; nothing was committed, retry shortly",
                             headers={"Retry-After": "1"}),
                request,
            )
        return await _unhandled(request, exc)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, DBAPIError):
            # The stack, the driver error's class and SQLSTATE, not the message: SQLAlchemy's holds
            # the statement's parameters and the driver's DETAIL ("Failing row contains (…)"),
            # both of which can be a raw subject id.
            orig = exc.orig if exc.orig is not None else exc
            log.error("unhandled database error on %s %s: %s (SQLSTATE %s)\n%s", request.method, request.url.path,
                      type(orig).__name__, getattr(orig, "sqlstate", None), "".join(traceback.format_tb(exc.__traceback__)))
        else:
            log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = {
            "type": TYPE_BASE + "internal-error",
            "title": "Internal server error",
            "status": 500,
            "detail": "The server failed to handle this request; nothing was committed.",
        }
        return JSONResponse(body, status_code=500, media_type=PROBLEM_JSON)


def _is_busy(exc: OperationalError) -> bool:
    msg = str(exc.orig).lower()
    return "database is locked" in msg or "database is busy" in msg or "database table is locked" in msg


_TITLES = {404: "Not found", 405: "Method not allowed", 406: "Not acceptable"}
_TYPES = {404: "not-found", 405: "method-not-allowed", 406: "not-acceptable"}
