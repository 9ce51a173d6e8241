"""The admin dashboard: its own FastAPI app mounted at /admin (DESIGN §1, §4, §5).

* One module per page under :mod:`service.admin.views`, registered in ``views.PAGES``; this
  factory mounts their routers, builds the menu from them and maps errors to pages.
* Views call the same services as the JSON API (deletion requests, jobs, model registry, audit,
  subject receipts); only the overview's counts come from :mod:`service.admin.queries`.
* Sign-in takes a bearer token of role operator, auditor or admin, checked by the API's own
  lookup, and sets a signed session cookie (:mod:`service.admin.auth`). Auditors see every page
  read-only: no action buttons, and every action POST answers 403 for them.
* Every POST carries the session's CSRF token in a hidden field; a POST without it or with a
  wrong one is a 403 and changes nothing. Each action is its own transaction (the view is the
  boundary); the outcome is shown once on the next page (a flash cookie).
* Live parts (overview counts, running jobs, versions, a job's progress) are small HTML
  fragments under ``/admin/fragments/...`` that ``static/admin.js`` polls every 2 s.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.admin import queries
from service.admin.auth import Forbidden, SignInFirst, who
from service.admin.views import PAGES, webhooks
from service.admin.web import PREFIX, BadInput, number, render
from service.core.config import Settings
from service.core.errors import ProblemError

HERE = Path(__file__).resolve().parent

SECURITY_HEADERS = [
    # no framing (clickjacking of the action buttons), only our own scripts and styles, and no
    # subject ids leaking to other sites through the Referer of a dashboard URL
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
                                 b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
]


class SecurityHeaders:
    """Pure ASGI middleware adding :data:`SECURITY_HEADERS` to every dashboard response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error_page(status: int, message: str, request: Request):
    return render(request, "error.html", who(request), status=status, message=message)


def create_admin_app(settings: Settings) -> FastAPI:
    """The dashboard app; the caller mounts it and sets ``state.parent`` to the main app."""
    admin = FastAPI(title="Lethe admin", docs_url=None, redoc_url=None, openapi_url=None)
    admin.add_middleware(SecurityHeaders)
    admin.state.settings = settings
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(prefix=PREFIX, nav=[page.NAV for page in PAGES if page.NAV],
                                 sla_amber=queries.SLA_AMBER_DAYS, sla_red=queries.SLA_RED_DAYS,
                                 sla_level=queries.sla_level, number=number,
                                 sla_extension_max=settings.pipeline.sla_extension_max_days, line_stops=webhooks.line_stops)
    admin.state.templates = templates
    admin.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for page in PAGES:
        admin.include_router(page.router)

    @admin.exception_handler(SignInFirst)
    async def _sign_in_first(request: Request, exc: SignInFirst):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/login?next={quote(target)}", status_code=303)

    @admin.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden):
        return _error_page(403, str(exc), request)

    @admin.exception_handler(BadInput)
    async def _bad_input(request: Request, exc: BadInput):
        return _error_page(422, str(exc), request)

    @admin.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError):
        return _error_page(exc.status, exc.detail, request)

    @admin.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        fields = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}" for e in exc.errors())
        return _error_page(422, f"Bad input ({fields}).", request)

    @admin.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _error_page(exc.status_code, str(exc.detail), request)

    return admin
