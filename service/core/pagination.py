"""Opaque, tamper-evident keyset cursors.

A cursor is the position of the last row of a page: ``(timestamp, id)``. It is encoded as
``base64url(JSON) "." base64url(HMAC-SHA256(secret, scope "|" JSON)[:16])``, so a client can
neither forge a position nor replay a cursor of one list (``scope``) against another. Any
malformed, tampered or foreign cursor raises :class:`InvalidCursor` (a ``400`` problem).

Usage (newest first)::

    pos = decode_cursor(cursor, secret=key, scope="deletion_requests") if cursor else None
    stmt = keyset_page(stmt, DeletionRequest.created_at, DeletionRequest.id, pos, limit)
    rows = session.execute(stmt).scalars().all()
    page, next_pos = split_page(rows, limit, lambda r: (r.created_at, r.id))
    next_cursor = encode_cursor(*next_pos, secret=key, scope="deletion_requests") if next_pos else None

The id keeps its JSON type (an ``int`` stays an ``int``); a ``uuid.UUID`` is encoded as its
string and returned as a ``str``: convert it back where the column needs it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, tuple_

from service.core.errors import InvalidCursor

T = TypeVar("T")
_MAX_CURSOR_CHARS = 512
_SIG_BYTES = 16


@dataclass(frozen=True)
class CursorPosition:
    at: datetime
    id: str | int


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    pad = "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(text + pad)


def _sign(secret: str, scope: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), scope.encode() + b"|" + payload, hashlib.sha256).digest()[:_SIG_BYTES]


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def encode_cursor(at: datetime, id_: str | int | uuid.UUID, *, secret: str, scope: str) -> str:
    """The cursor that continues after the row ``(at, id_)``."""
    ident: str | int = str(id_) if isinstance(id_, uuid.UUID) else id_
    payload = json.dumps(
        {"t": _aware(at).astimezone(UTC).isoformat(timespec="microseconds"), "i": ident},
        separators=(",", ":"),
    ).encode()
    return f"{_b64e(payload)}.{_b64e(_sign(secret, scope, payload))}"


def decode_cursor(cursor: str, *, secret: str, scope: str) -> CursorPosition:
    """Verify and decode a cursor; raise :class:`InvalidCursor` on anything else."""
    if not cursor or len(cursor) > _MAX_CURSOR_CHARS or cursor.count(".") != 1:
        raise InvalidCursor("The cursor is malformed; pass back the next_cursor of a previous page unchanged")
    body, sig = cursor.split(".")
    try:
        payload = _b64d(body)
        given = _b64d(sig)
    except (binascii.Error, ValueError):
        raise InvalidCursor("The cursor is not valid base64url; pass back next_cursor unchanged") from None
    if not hmac.compare_digest(given, _sign(secret, scope, payload)):
        raise InvalidCursor("The cursor was altered or belongs to another list; pass back next_cursor unchanged")
    try:
        doc = json.loads(payload)
        at = _aware(datetime.fromisoformat(doc["t"]))
        ident = doc["i"]
    except (ValueError, KeyError, TypeError):  # pragma: no cover - only reachable with a valid signature
        raise InvalidCursor("The cursor's content is malformed") from None
    if not isinstance(ident, (str, int)) or isinstance(ident, bool):  # pragma: no cover - same
        raise InvalidCursor("The cursor's content is malformed")
    return CursorPosition(at=at, id=ident)


def keyset_page(
    stmt: Select[Any],
    at_col: Any,
    id_col: Any,
    position: CursorPosition | None,
    limit: int,
    *,
    id_convert: Callable[[str | int], Any] | None = None,
) -> Select[Any]:
    """Newest first: order by ``(at, id)`` descending, continue strictly after ``position``,
    fetch ``limit + 1`` rows (the extra one says whether another page exists)."""
    if position is not None:
        ident = id_convert(position.id) if id_convert else position.id
        stmt = stmt.where(tuple_(at_col, id_col) < tuple_(position.at, ident))
    return stmt.order_by(at_col.desc(), id_col.desc()).limit(limit + 1)


def split_page(
    rows: Sequence[T], limit: int, key: Callable[[T], tuple[datetime, Any]]
) -> tuple[list[T], tuple[datetime, Any] | None]:
    """Cut the ``limit + 1`` rows of :func:`keyset_page` into the page and the position the
    next page starts after (``None`` on the last page)."""
    page = list(rows[:limit])
    if len(rows) > limit and page:
        return page, key(page[-1])
    return page, None
