"""Manifest cache hits answered ahead of FastAPI's routing (DESIGN §9: ``latest`` p99 ≤ 5 ms).

A cache hit costs little of its own; most of its CPU under the route was FastAPI matching the
path against every route and solving the route's parameters. :class:`ManifestFastPath` is a
pure-ASGI layer installed *inside* the request-limits middlewares (so the header and body limits
apply as before) and in front of the router. It answers ``GET /v1/models/{name}/versions/{ref}``
only when the answer is a manifest-cache hit, with the same checks and the same answer as the
route (``router.get_version``):

* the token from the process's token cache (:func:`service.client.tokens.principal_from_cache`:
  the route's own first look, ``cached_principal``, on the raw header) and the route's role
  check (``router._serve``);
* the cache's own freshness (``manifest_cache.py``: LISTEN/NOTIFY, ``PRAGMA data_version``);
* the hit decision :func:`router.cached_answer`, shared with the route: 200 with the stored body
  and ETag, or 304 for a matching ``If-None-Match``.

Everything else is handed to the application unchanged: a miss, a token not in the token cache
(unknown, revoked, expired from the cache: the route looks it up), a role that may not read
manifests (the route's 403), a long-poll the cache cannot answer, any query other than a plain
``wait=<number>`` within the limit, a body, repeated headers, a ``root_path``, any other method
or path. Header for header, a fast answer equals the route's (tested against it).
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from service.client.tokens import principal_from_cache
from service.core.errors import ProblemError
from service.core.limits import single_headers
from service.model_registry.router import _serve, cached_answer, manifest_cache_for

# The route's path as Starlette compiles it ({name} and {ref} are str parameters: [^/]+).
_PATH = re.compile(r"/v1/models/([^/]+)/versions/([^/]+)")
# ``wait`` in the one spelling that pydantic and float() read alike; anything else: the route.
_WAIT = re.compile(rb"wait=([0-9]{1,6}(?:\.[0-9]{1,6})?)")
_JSON = b"application/json"
_NO_CACHE = b"no-cache"
_HEADERS = frozenset((b"authorization", b"if-none-match"))  # each at most once, else the route


class ManifestFastPath:
    """Pure ASGI: manifest-cache hits answered before routing; everything else to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.answered = 0  # fast answers given (tests check that hits do come this way)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            answer = self._answer(scope)
            if answer is not None:
                etag, body = answer
                self.answered += 1
                if body is None:
                    await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", etag.encode("latin-1"))]})
                    await send({"type": "http.response.body", "body": b""})
                else:
                    # the headers of starlette's Response(body, media_type="application/json",
                    # headers={"ETag": …, "Cache-Control": "no-cache"}), in its order
                    await send({"type": "http.response.start", "status": 200, "headers": [
                        (b"etag", etag.encode("latin-1")), (b"cache-control", _NO_CACHE),
                        (b"content-length", str(len(body)).encode()), (b"content-type", _JSON)]})
                    await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _answer(scope: Scope) -> tuple[str, bytes | None] | None:
        """The route's answer when it is a cache hit, else None (the route answers)."""
        if scope.get("root_path"):
            return None
        match = _PATH.fullmatch(scope["path"])
        if match is None:
            return None
        name, ref = match.group(1), match.group(2)
        app = scope["app"]
        cache = manifest_cache_for(app, ref)
        if cache is None:
            return None
        wait: float | None = None
        query = scope.get("query_string", b"")
        if query:
            w = _WAIT.fullmatch(query)
            if w is None:
                return None
            wait = float(w.group(1))
            if not 0 < wait <= app.state.settings.api.long_poll_max_s:
                return None
        headers = single_headers(scope["headers"], _HEADERS)
        if headers is None or b"authorization" not in headers:
            return None
        if any(key == b"transfer-encoding" or (key == b"content-length" and value != b"0") for key, value in scope["headers"]):
            return None  # a GET with a body: unusual, the route's business
        if_none_match = headers.get(b"if-none-match")
        principal = principal_from_cache(headers[b"authorization"].decode("latin-1"))  # None: malformed too
        if principal is None:
            return None
        try:
            _serve(principal)
        except ProblemError:  # role (403): the route says so
            return None
        return cached_answer(cache, name, ref, None if if_none_match is None else if_none_match.decode("latin-1"), wait)
