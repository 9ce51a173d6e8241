"""Sign-in and sign-out (no menu entry)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from service.admin import auth
from service.admin.web import PREFIX, factory, render, settings

router = APIRouter()
NAV = None


def _login_page(request: Request, status: int = 200, error: str | None = None, next_url: str = "") -> HTMLResponse:
    token, cookie = auth.new_login_csrf(settings(request).security.secret_key)
    resp = render(request, "login.html", None, status=status, error=error, csrf=token, next_url=next_url)
    resp.set_cookie(auth.PRE_COOKIE, cookie, max_age=auth.PRE_MAX_AGE_S, httponly=True, samesite="lax", path=PREFIX,
                    secure=request.url.scheme == "https")
    return resp


def _safe_next(value: Any) -> str:
    """Only a path of the dashboard itself (no open redirect to another site)."""
    v = value if isinstance(value, str) else ""
    return v if v.startswith(PREFIX + "/") and not v.startswith("//") and "\\" not in v else f"{PREFIX}/"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = ""):  # noqa: A002 - the query parameter's name
    return _login_page(request, next_url=_safe_next(next) if next else "")


@router.post("/login")
async def login(request: Request):
    security = settings(request).security
    form = await request.form()
    next_url = _safe_next(form.get("next"))
    if not auth.login_csrf_ok(security.secret_key, request.cookies.get(auth.PRE_COOKIE), form.get("csrf")):
        return _login_page(request, 403, "The sign-in form expired or was not sent from this page; try again.", next_url)
    token = form.get("token")
    token = token.strip() if isinstance(token, str) else ""
    principal = auth.lookup(factory(request), token) if token else None
    if principal is None:
        return _login_page(request, 401, "Unknown or revoked token.", next_url)
    if principal.role not in auth.DASHBOARD_ROLES:
        return _login_page(request, 403, f"The {principal.role.value} role cannot use the dashboard "
                                          "(operator, auditor or admin only).", next_url)
    resp = RedirectResponse(next_url, status_code=303)
    resp.set_cookie(auth.COOKIE, auth.encode(security.secret_key, auth.new_session(principal)),
                    max_age=security.session_max_age_s, httponly=True, samesite="lax", path=PREFIX,
                    secure=request.url.scheme == "https")
    resp.delete_cookie(auth.PRE_COOKIE, path=PREFIX)
    return resp


@router.post("/logout")
async def logout(request: Request):
    await auth.check_post(request, act=False)
    resp = RedirectResponse(f"{PREFIX}/login", status_code=303)
    resp.delete_cookie(auth.COOKIE, path=PREFIX)
    return resp
