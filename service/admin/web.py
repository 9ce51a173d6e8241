"""What every dashboard view uses: the app's settings and database, rendering, redirects with a
one-time flash message, and the small input parsers whose refusals become a 422 page."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote, unquote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import sessionmaker

from service.core.config import Settings
from service.models._types import utcnow

PREFIX = "/admin"
FLASH = "lethe_admin_flash"


class BadInput(Exception):
    """Shown as a 422 page with the message."""


def settings(request: Request) -> Settings:
    return request.app.state.settings


def factory(request: Request) -> sessionmaker:
    """The main app's session factory (built in its lifespan; the dashboard is mounted in it)."""
    return request.app.state.parent.state.session_factory


def render(request: Request, name: str, me: Any, status: int = 200, **ctx) -> HTMLResponse:
    """A full page; shows, then clears, the flash message the previous action left."""
    flash = request.cookies.get(FLASH)
    resp = request.app.state.templates.TemplateResponse(
        request, name, {"me": me, "now": utcnow(), "flash": unquote(flash) if flash else None,
                        "path": request.url.path, **ctx}, status_code=status)
    if flash:
        resp.delete_cookie(FLASH, path=PREFIX)
    return resp


def fragment(request: Request, name: str, me: Any, **ctx) -> HTMLResponse:
    """A live part of a page that ``static/admin.js`` polls (never cached)."""
    resp = request.app.state.templates.TemplateResponse(request, name, {"me": me, "now": utcnow(), **ctx})
    resp.headers["Cache-Control"] = "no-store"
    return resp


def redirect(url: str, flash: str | None = None) -> RedirectResponse:
    """303 to ``url`` (after a POST), with an outcome shown once on the next page."""
    resp = RedirectResponse(url, status_code=303)
    if flash:
        resp.set_cookie(FLASH, quote(flash[:300]), max_age=60, httponly=True, samesite="lax", path=PREFIX)
    return resp


def parse_uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise BadInput(f"'{value}' is not a request id") from None


def text_field(form: Any, name: str) -> str | None:
    """A free-text form field, stripped and cut at 1000 characters; None when blank."""
    value = form.get(name)
    return value.strip()[:1000] if isinstance(value, str) and value.strip() else None


def number(v: Any) -> float | None:
    """A metric value fit to plot (bools and non-numbers are not)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def bound_points(bounds: list[tuple[int, dict]]) -> tuple[list[tuple[int, float]], str, str]:
    """(points, title, y label) of the bound chart: KL per version, or for an (ε, δ) model
    (certified_removal) ε_spent per version with its δ and budget (a statement per release)."""
    eps = [(n, y) for n, b in bounds if (y := number(b.get("epsilon_spent"))) is not None]
    if eps:
        last = bounds[-1][1]
        return eps, f"ε spent per version (δ={last.get('delta')}, budget ε={last.get('epsilon_budget')}; per release)", "epsilon_spent"
    return [(n, y) for n, b in bounds if (y := number(b.get("kl_nats"))) is not None], "information bound per version", "kl_nats"
