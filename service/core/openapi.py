"""The OpenAPI document, made to tell the truth about the server.

FastAPI's generated document misses what happens outside the route functions: the bearer token
(checked by a dependency), the problem responses (``application/problem+json``, RFC 9457) that
errors, validation and the middlewares answer with, and bodies a route reads itself. This module
adds them after generation, by rules over each operation, so every route documents the 4xx codes
it can return without every router repeating them:

* every operation: ``431`` (headers too large);
* ``/v1/...``: the bearer scheme, ``401`` and ``403``;
* any parameter or body: ``422``; a body: ``400`` (malformed JSON), ``413``, ``415``;
* a path parameter or a ``model`` query: ``404``; a ``cursor`` parameter: ``400`` (invalid cursor);
* ``POST``: ``409`` (conflicts: exists, illegal transition, active job) and ``503`` (SQLite busy);
* per path, what only it does (``304``/``206``/``410``/``416`` on versions and weights, the
  sample upload's media types, ``/metrics`` as text, ``/readyz``'s ``503``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from service.core.errors import PROBLEM_JSON

BEARER = "bearerAuth"

_DESCRIPTIONS = {
    400: "Malformed request (JSON that does not parse, an invalid cursor)",
    401: "Missing, unknown or revoked bearer token",
    403: "The token's role may not do this",
    404: "Not found",
    409: "Conflict with the current state (named in the problem)",
    410: "Gone: the version was revoked (it held data of deleted subjects)",
    413: "Request body too large",
    415: "Unsupported Content-Type",
    416: "Range not satisfiable",
    422: "Validation failed (the failing fields are listed in `errors`)",
    431: "Request headers too large",
    503: "Temporarily unavailable; retry (see Retry-After)",
}

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details; `type` is stable, `detail` says what was wrong.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}, "kind": {"type": "string"}},
            },
        },
    },
    "additionalProperties": True,
}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
SAMPLES_BODY: dict[str, Any] = {
    "required": True,
    "description": (
        "Samples in one of three formats (the Content-Type decides): JSON rows; an npz archive with arrays "
        "`x` (n, *input_shape) float, `labels` (n,) int, `subject_ids` (n,) str and `split` (n,) str or one "
        "string; or a safetensors file with tensors `x` and `labels` and metadata `subject_ids` (JSON list) "
        "and `split` (string or JSON list); `application/octet-stream` needs `?format=safetensors`."
    ),
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/SamplesJson"}},
        "application/x-npz": _BINARY,
        "application/vnd.safetensors": _BINARY,
        "application/octet-stream": _BINARY,
    },
}

_SAFETENSORS = {"application/vnd.safetensors": _BINARY}
CHECKPOINT_BODY: dict[str, Any] = {
    "required": True,
    "description": "A standard-family model's trained `state_dict`, or a linear_head model's architecture `state_dict` "
                   "(its extractor is used; the last layer is ignored and the head trained by Lethe), as one safetensors file, streamed to the store "
                   "(its own size limit, `api.max_checkpoint_bytes`) and validated by a `checkpoint` job in the worker.",
    "content": {"application/vnd.safetensors": _BINARY, "application/octet-stream": _BINARY},
}
_NOT_MODIFIED = {"description": "Not modified: the ETag in If-None-Match is current (no body)"}

# (path, method) -> extra responses and overrides of what FastAPI generated.
_EXTRA: dict[tuple[str, str], dict[int, dict[str, Any] | None]] = {
    ("/v1/models/{name}/versions/{ref}", "get"): {304: _NOT_MODIFIED, 410: {}},
    ("/v1/models/{name}/versions/{ref}/weights", "get"): {
        200: {"description": "The safetensors file; ETag = sha256", "content": _SAFETENSORS},
        206: {"description": "The requested byte range", "content": _SAFETENSORS},
        304: _NOT_MODIFIED,
        410: {},
        416: {},
    },
    ("/v1/deletion-requests", "post"): {404: {"description": "The body names a model that is not registered"}},
    ("/metrics", "get"): {200: {"description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    ("/readyz", "get"): {503: {}},
    ("/v1/tokens", "post"): {404: {"description": "The body names a client that does not exist"}},
    # OpenDSR routes live outside /v1 but need a token like it
    ("/opendsr/requests", "post"): {401: {}, 403: {}, 503: {}},
    ("/opendsr/requests/{subject_request_id}", "get"): {401: {}, 403: {}, 503: {}},
    ("/opendsr/requests/{subject_request_id}", "delete"): {401: {}, 403: {}, 409: {}, 503: {}},
    ("/opendsr/cert.pem", "get"): {503: {}},
    ("/v1/models/{name}/class-subjects", "post"): {
        409: {"description": "The model was not registered with subjects_are_classes; a label or subject is mapped twice "
                             "or already mapped otherwise; or a class's samples are not all its subject's"},
        422: {"description": "A label outside the model's classes or without training samples, the method cannot forget "
                             "a class, or the body is invalid"},
    },
    ("/v1/models/{name}/samples", "post"): {
        409: {"description": "A subject or class was deleted from the model (no renewed consent), a subject has an open "
                             "deletion request, a row breaks a mapped class (subjects_are_classes), or an active job "
                             "is forgetting a row's class"},
    },
    ("/v1/models/{name}/retire", "post"): {
        409: {"description": "The model has an active job (named in the body) or is already retired"},
        422: {"description": "The body is invalid (a reason is required)"},
    },
    ("/v1/models/{name}/classes/{label}/forget", "post"): {
        409: {"description": "An active job; or the label has no training sample (never existed or already forgotten), "
                             "its subjects hold other classes too, fewer than two classes would remain, or one of them has an open request"},
        422: {"description": "The model's method cannot forget a class, or the body is invalid"},
    },
}


def _problem(code: int, existing: dict[str, Any] | None = None) -> dict[str, Any]:
    description = (existing or {}).get("description") or _DESCRIPTIONS.get(code, "Error")
    if code == 422 and description == "Validation Error":
        description = _DESCRIPTIONS[422]
    return {"description": description, "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _codes(path: str, method: str, op: dict[str, Any]) -> set[int]:
    params = op.get("parameters", [])
    codes = {431}
    if path.startswith("/v1/"):
        codes |= {401, 403}
    if params or "requestBody" in op:
        codes.add(422)
    if "requestBody" in op:
        codes |= {400, 413, 415}
    # A path parameter, or a model named in the query, may name nothing.
    if any(p.get("in") == "path" or (p.get("in") == "query" and p.get("name") == "model") for p in params):
        codes.add(404)
    if any(p.get("name") == "cursor" for p in params):
        codes.add(400)
    if method == "post":
        codes |= {409, 503}
    return codes


def document(schema: dict[str, Any], extra_models: tuple[type[BaseModel], ...] = ()) -> dict[str, Any]:
    """Add the security scheme and the problem responses to a generated document (in place);
    ``extra_models`` are bodies that routes read themselves (the samples' JSON form)."""
    components = schema.setdefault("components", {})
    for model in extra_models:
        doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in doc.pop("$defs", {}).items():
            components.setdefault("schemas", {}).setdefault(name, sub)
        components.setdefault("schemas", {}).setdefault(model.__name__, doc)
    components.setdefault("securitySchemes", {})[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from `lethe token create --role R`; roles: requester, operator, serving, auditor, admin",
    }
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete", "head"):
                continue
            if path == "/v1/models/{name}/samples" and method == "post":
                op["requestBody"] = SAMPLES_BODY
            if path == "/v1/models/{name}/checkpoint" and method == "post":
                op["requestBody"] = CHECKPOINT_BODY
            if path.startswith("/v1/"):
                op["security"] = [{BEARER: []}]
            responses = op.setdefault("responses", {})
            extra = _EXTRA.get((path, method), {})
            codes = _codes(path, method, op) | {c for c in extra if c >= 400}
            for code in sorted(codes):
                responses[str(code)] = _problem(code, responses.get(str(code)))
            for code, spec in extra.items():
                if code < 400 and spec is not None:
                    responses[str(code)] = spec
            # Any other error response a router declared is a problem too.
            for code in list(responses):
                if code.isdigit() and int(code) >= 400 and int(code) not in codes:
                    responses[code] = _problem(int(code), responses[code])
    return schema


def install(app: FastAPI, extra_models: tuple[type[BaseModel], ...] = ()) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                ),
                extra_models,
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
