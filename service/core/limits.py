"""Pure-ASGI limits at the door: a declared or streamed body over the limit is a 413 problem,
request headers over the limit a 431, a JSON body with a duplicate key a 422."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.errors import PROBLEM_JSON, BadRequest, HeadersTooLarge, PayloadTooLarge, ValidationFailed


class _TooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """``max_bytes`` for every body, except paths matching a pattern of ``per_path`` (their own limit)."""

    def __init__(self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None) -> None:
        self.app = app
        self.default_bytes = max_bytes
        self.per_path = [(re.compile(p), n) for p, n in (per_path or {}).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = next((n for pattern, n in self.per_path if pattern.fullmatch(path)), self.default_bytes)
        await self._limited(scope, receive, send, limit)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > max_bytes:
                    await self._reject(scope, send, max_bytes)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(scope, send, max_bytes)

    async def _reject(self, scope: Scope, send: Send, max_bytes: int) -> None:
        err = PayloadTooLarge(f"Request body exceeds the limit of {max_bytes} bytes")
        body = json.dumps(err.to_body(scope.get("path"))).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _send_problem(scope: Scope, send: Send, err) -> None:
    body = json.dumps(err.to_body(scope.get("path"))).encode()
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class HeaderSizeLimitMiddleware:
    """Request headers over ``max_bytes`` in total (names and values) are a 431 problem.

    uvicorn's httptools parser has no header size limit of its own (h11's is per event), so the
    limit is enforced here, before any route or dependency sees the request."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            total = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", ()))
            if total > self.max_bytes:
                await _send_problem(scope, send, HeadersTooLarge(
                    f"Request headers take {total} bytes; the limit is {self.max_bytes}"))
                return
        await self.app(scope, receive, send)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def single_headers(headers: Iterable[tuple[bytes, bytes]], names: Collection[bytes]) -> dict[bytes, bytes] | None:
    """The values of the headers named in ``names`` (lower-case ASGI names) that are present,
    each sent at most once; None when one of them is repeated (the fast paths then leave the
    request to the route)."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in names:
            if name in found:
                return None
            found[name] = value
    return found


def is_json_media(content_type: bytes) -> bool:
    """``application/json`` or ``application/*+json`` (parameters ignored)."""
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return is_json_media(value)
    return False


async def read_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """The whole request body, and a ``receive`` that replays it to the application; ``None``
    when the client went away first (the replaying ``receive`` then says so)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None, replay([message], receive)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    return body, replay([{"type": "http.request", "body": body, "more_body": False}], receive)


class DuplicateJsonKeysMiddleware:
    """A JSON body with a key twice in one object is a 422 naming the key (instead of the last
    one silently winning). Other bodies, and JSON that does not parse, pass through untouched
    (the route answers those). The body is read once and replayed to the application."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH") or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        body, replayed = await read_body(receive)
        if body is None:  # the client went away
            await self.app(scope, replayed, send)
            return
        try:
            json.loads(body, object_pairs_hook=_no_duplicates)
        except _DuplicateKey as exc:
            err = ValidationFailed(
                f"Duplicate key {str(exc)!r} in a JSON object; each key may appear once",
                errors=[{"field": f"body.{exc}", "message": "duplicate key", "kind": "duplicate_key"}],
            )
            await _send_problem(scope, send, err)
            return
        except RecursionError:
            await _send_problem(scope, send, BadRequest("Request body is not valid JSON: nested too deeply"))
            return
        except ValueError:
            pass  # not JSON: the route's own parser answers with its 400
        await self.app(scope, replayed, send)


def replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def next_message() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return next_message
