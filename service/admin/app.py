"""The admin dashboard: its own FastAPI app mounted at /admin (DESIGN §1, §4, §5).

* Views call the same services as the JSON API (deletion requests, jobs, model registry, audit,
  subject receipts); only the overview's counts come from :mod:`service.admin.queries`.
* Sign-in takes a bearer token of role operator, auditor or admin and sets a signed session
  cookie (:mod:`service.admin.auth`). Auditors see every page read-only: no action buttons, and
  every action POST answers 403 for them.
* Every POST carries the session's CSRF token in a hidden field; a POST without it or with a
  wrong one is a 403 and changes nothing. Each action is its own transaction (the view is the
  boundary); the outcome is shown once on the next page (a flash cookie).
* Live parts (overview counts, running jobs, versions, a job's progress) are small HTML
  fragments under ``/admin/fragments/...`` that ``static/admin.js`` polls every 2 s.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.admin import auth, queries
from service.admin.charts import line_chart
from service.audit.router import list_events
from service.audit.service import verify_chain
from service.core.config import Settings
from service.core.db import read_session
from service.core.errors import ProblemError
from service.core.security import hash_token, subject_key
from service.deletion_request import service as requests_service
from service.job import service as job_service
from service.job.router import to_read as job_read
from service.job.router import to_reads as job_reads
from service.model_registry import service as registry
from service.models import ApiToken, JobKind, JobStatus, JobStep, RequestStatus, Role
from service.models._types import utcnow
from service.subject.service import receipt

HERE = Path(__file__).resolve().parent
PREFIX = "/admin"
FLASH = "lethe_admin_flash"
REQUEST_ACTIONS = ("approve", "deny", "cancel", "retry")
# Which request actions a status allows: derived from the service's own transition table, so a
# button is shown exactly when the service would accept the action.
ACTIONS_FROM = {action: {s.value for s in requests_service.TRANSITIONS[action][0]} for action in REQUEST_ACTIONS}
JOB_STEPS = [s.value for s in JobStep]
CHART_VERSIONS = 60
VERSIONS_PER_PAGE = 50
MAX_BULK = 500


class Forbidden(Exception):
    pass


class SignInFirst(Exception):
    pass


class BadInput(Exception):
    pass


@dataclass(frozen=True)
class VersionRow:
    number: int
    parent: int | None  # None: no parent, or a parent older than the listed page
    has_parent: bool
    state: str
    metrics: dict
    bound: dict
    created_at: datetime
    revoked_at: datetime | None
    aliases: list[str]


def _parse_uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise BadInput(f"'{value}' is not a request id") from None


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _step_states(job) -> list[tuple[str, str]]:
    """(step, done | current | failed | pending) for the job's pipeline steps."""
    done_upto = JOB_STEPS.index(job.step) if job.step in JOB_STEPS else -1
    current = (job.progress or {}).get("step")
    out = []
    for i, name in enumerate(JOB_STEPS):
        if job.status == JobStatus.succeeded.value or i <= done_upto:
            state = "done"
        elif name == current and job.status == JobStatus.running.value:
            state = "current"
        elif job.status == JobStatus.failed.value and i == done_upto + 1:
            state = "failed"
        else:
            state = "pending"
        out.append((name, state))
    return out


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


def create_admin_app(settings: Settings) -> FastAPI:
    admin = FastAPI(title="Lethe admin", docs_url=None, redoc_url=None, openapi_url=None)
    admin.add_middleware(SecurityHeaders)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(prefix=PREFIX, actions_from=ACTIONS_FROM, sla_amber=queries.SLA_AMBER_DAYS,
                                 sla_red=queries.SLA_RED_DAYS, sla_level=queries.sla_level, number=_number,
                                 sla_extension_max=settings.pipeline.sla_extension_max_days)
    admin.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    secret = settings.security.secret_key
    max_age = settings.security.session_max_age_s

    # ------------------------------------------------------------------ plumbing
    def parent(request: Request):
        return request.app.state.parent.state

    def factory(request: Request):
        return parent(request).session_factory

    def who(request: Request) -> auth.AdminSession | None:
        return auth.current(request, factory(request), secret, max_age)

    def render(request: Request, name: str, me: auth.AdminSession | None, status: int = 200, **ctx) -> HTMLResponse:
        flash = request.cookies.get(FLASH)
        resp = templates.TemplateResponse(
            request, name, {"me": me, "now": utcnow(), "flash": unquote(flash) if flash else None,
                            "path": request.url.path, **ctx}, status_code=status)
        if flash:
            resp.delete_cookie(FLASH, path=PREFIX)
        return resp

    def fragment(request: Request, name: str, me: auth.AdminSession, **ctx) -> HTMLResponse:
        resp = templates.TemplateResponse(request, name, {"me": me, "now": utcnow(), **ctx})
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def redirect(url: str, flash: str | None = None) -> RedirectResponse:
        resp = RedirectResponse(url, status_code=303)
        if flash:
            resp.set_cookie(FLASH, quote(flash[:300]), max_age=60, httponly=True, samesite="lax", path=PREFIX)
        return resp

    def need(request: Request) -> auth.AdminSession:
        me = who(request)
        if me is None:
            raise SignInFirst()
        return me

    async def check_post(request: Request, act: bool = True) -> tuple[auth.AdminSession, Any]:
        """The signed-in session and the form, after the CSRF check (and the role check for actions)."""
        me = who(request)
        if me is None:
            raise Forbidden("Sign in first.")
        form = await request.form()
        token = form.get("csrf")
        if not isinstance(token, str) or not token or not hmac.compare_digest(token, me.csrf):
            raise Forbidden("Missing or wrong CSRF token: reload the page and try again.")
        if act and not me.can_act:
            raise Forbidden(f"The {me.role.value} role is read-only here.")
        return me, form

    @admin.exception_handler(SignInFirst)
    async def _sign_in_first(request: Request, exc: SignInFirst):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/login?next={quote(target)}", status_code=303)

    @admin.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden):
        return render(request, "error.html", who(request), status=403, message=str(exc))

    @admin.exception_handler(BadInput)
    async def _bad_input(request: Request, exc: BadInput):
        return render(request, "error.html", who(request), status=422, message=str(exc))

    @admin.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError):
        return render(request, "error.html", who(request), status=exc.status, message=exc.detail)

    @admin.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        fields = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}" for e in exc.errors())
        return render(request, "error.html", who(request), status=422, message=f"Bad input ({fields}).")

    @admin.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return render(request, "error.html", who(request), status=exc.status_code, message=str(exc.detail))

    # ------------------------------------------------------------------ sign-in
    def login_page(request: Request, status: int = 200, error: str | None = None, next_url: str = "") -> HTMLResponse:
        token, cookie = auth.new_login_csrf(secret)
        resp = render(request, "login.html", None, status=status, error=error, csrf=token, next_url=next_url)
        resp.set_cookie(auth.PRE_COOKIE, cookie, max_age=auth.PRE_MAX_AGE_S, httponly=True, samesite="lax", path=PREFIX,
                        secure=request.url.scheme == "https")
        return resp

    def safe_next(value: Any) -> str:
        v = value if isinstance(value, str) else ""
        return v if v.startswith(PREFIX + "/") and not v.startswith("//") and "\\" not in v else f"{PREFIX}/"

    @admin.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = ""):  # noqa: A002 - the query parameter's name
        return login_page(request, next_url=safe_next(next) if next else "")

    @admin.post("/login")
    async def login(request: Request):
        form = await request.form()
        next_url = safe_next(form.get("next"))
        if not auth.login_csrf_ok(secret, request.cookies.get(auth.PRE_COOKIE), form.get("csrf")):
            return login_page(request, 403, "The sign-in form expired or was not sent from this page; try again.", next_url)
        token = form.get("token")
        token = token.strip() if isinstance(token, str) else ""
        row = None
        if token:
            with read_session(factory(request)) as db:
                row = db.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).scalar_one_or_none()
        if row is None or row.revoked_at is not None:
            return login_page(request, 401, "Unknown or revoked token.", next_url)
        if auth.Role(row.role) not in auth.DASHBOARD_ROLES:
            return login_page(request, 403, f"The {row.role} role cannot use the dashboard (operator, auditor or admin only).", next_url)
        resp = RedirectResponse(next_url, status_code=303)
        resp.set_cookie(auth.COOKIE, auth.encode(secret, auth.new_session(row)), max_age=max_age, httponly=True,
                        samesite="lax", path=PREFIX, secure=request.url.scheme == "https")
        resp.delete_cookie(auth.PRE_COOKIE, path=PREFIX)
        return resp

    @admin.post("/logout")
    async def logout(request: Request):
        await check_post(request, act=False)
        resp = RedirectResponse(f"{PREFIX}/login", status_code=303)
        resp.delete_cookie(auth.COOKIE, path=PREFIX)
        return resp

    # ------------------------------------------------------------------ overview
    def overview_data(db) -> dict:
        now = utcnow()
        by_status = queries.requests_by_status(db)
        sla, overdue, open_total = queries.open_requests_by_due(db, now)
        running = job_reads(db, job_service.list_jobs(db, status=JobStatus.running.value, limit=50)
                            + job_service.list_jobs(db, status=JobStatus.queued.value, limit=50))
        models = registry.list_models(db, after=None, limit=500)[:500]
        names = {m.id: m.name for m in models}
        latest, charts = [], []
        for m in models:
            versions = list(reversed(registry.list_versions(db, m, before=None, limit=CHART_VERSIONS)[:CHART_VERSIONS]))
            if not versions:
                continue
            latest.append({"model": m.name, "v": versions[-1]})
            kl = [(v.number, y) for v in versions if (y := _number((v.bound or {}).get("kl_nats"))) is not None]
            acc = [(v.number, y) for v in versions if (y := _number((v.metrics or {}).get("eval_accuracy"))) is not None]
            charts.append({
                "model": m.name,
                "kl": line_chart(kl, title=f"{m.name}: information bound per version", y_label="kl_nats"),
                "acc": line_chart(acc, title=f"{m.name}: eval accuracy per version", y_label="accuracy"),
            })
        return {"by_status": by_status, "sla": sla, "overdue": overdue, "open_total": open_total, "running": running,
                "names": names, "failed_jobs": queries.failed_job_count(db),
                "failed_requests": queries.failed_request_count(by_status), "latest": latest, "charts": charts,
                "statuses": [s.value for s in RequestStatus]}

    @admin.get("/", response_class=HTMLResponse)
    def overview(request: Request):
        me = need(request)
        with read_session(factory(request)) as db:
            return render(request, "overview.html", me, **overview_data(db))

    @admin.get("/fragments/overview", response_class=HTMLResponse)
    def overview_fragment(request: Request):
        me = who(request)
        if me is None:
            return HTMLResponse("", status_code=401)
        with read_session(factory(request)) as db:
            return fragment(request, "_live.html", me, **overview_data(db))

    # ------------------------------------------------------------------ requests
    def _due_limit(due_before: str) -> datetime:
        try:
            return datetime.combine(date.fromisoformat(due_before), time.min, tzinfo=UTC)
        except ValueError:
            raise BadInput(f"'{due_before}' is not a date (YYYY-MM-DD)") from None

    @admin.get("/requests", response_class=HTMLResponse)
    def requests_page(request: Request, status: str = "", model: str = "", subject_id: str = "",
                      due_before: str = "", cursor: str = ""):
        me = need(request)
        try:
            statuses = [RequestStatus(status)] if status else None
        except ValueError:
            raise BadInput(f"'{status}' is not a request status") from None
        limit_at = _due_limit(due_before) if due_before else None
        with read_session(factory(request)) as db:
            # "Due before" is not a filter of the service: walk its pages (bounded) and keep matches.
            items, next_cursor, pages = [], cursor or None, 0
            while True:
                page = requests_service.list_requests(db, secret=secret, statuses=statuses, model=model or None,
                                                      subject_id=subject_id or None, cursor=next_cursor,
                                                      limit=50 if limit_at is None else 200,
                                                      redact=me.role is Role.auditor)
                pages += 1
                items += [r for r in page.items if limit_at is None or r.due_at < limit_at]
                next_cursor = page.next_cursor
                if limit_at is None or next_cursor is None or len(items) >= 50 or pages >= 10:
                    break
            models = [m.name for m in registry.list_models(db, after=None, limit=500)[:500]]
        f = {"status": status, "model": model, "subject_id": subject_id, "due_before": due_before}
        return render(request, "requests.html", me, items=items, next_cursor=next_cursor, models=models,
                      statuses=[x.value for x in RequestStatus], f=f)

    @admin.post("/requests/bulk-approve")
    async def bulk_approve(request: Request):
        me, form = await check_post(request)
        ids = [_parse_uuid(v) for v in form.getlist("ids")][:MAX_BULK]
        if not ids:
            return redirect(f"{PREFIX}/requests", "Nothing selected.")
        done, refused = 0, []
        for rid in ids:  # one transaction each: a request that moved on meanwhile does not block the others
            try:
                with factory(request).begin() as db:
                    requests_service.transition(db, rid, "approve", actor=me.actor,
                                                stop_the_line=settings.pipeline.stop_the_line)
                done += 1
            except ProblemError as exc:
                refused.append(f"{str(rid)[:8]}: {exc.detail}")
        msg = f"Approved {done} request(s)."
        if refused:
            msg += f" Not approved: {len(refused)} ({'; '.join(refused[:3])}{' …' if len(refused) > 3 else ''})."
        return redirect(f"{PREFIX}/requests", msg)

    @admin.post("/requests/{rid}/{action}")
    async def request_action(request: Request, rid: uuid.UUID, action: str):
        me, form = await check_post(request)
        if action not in REQUEST_ACTIONS:
            raise StarletteHTTPException(404, f"No request action '{action}'")
        reason = form.get("reason")
        reason = reason.strip()[:1000] if isinstance(reason, str) and reason.strip() else None
        if action == "deny" and not reason:
            raise BadInput("Denying a request needs a reason.")
        with factory(request).begin() as db:
            r = requests_service.transition(db, rid, action, actor=me.actor, reason=reason,
                                            stop_the_line=settings.pipeline.stop_the_line)
        return redirect(f"{PREFIX}/requests/{rid}", f"Request {action}: now {r.status.value}.")

    @admin.get("/requests/{rid}", response_class=HTMLResponse)
    def request_detail(request: Request, rid: uuid.UUID):
        me = need(request)
        with read_session(factory(request)) as db:
            r = requests_service.get(db, rid, redact=me.role is Role.auditor)  # auditors: no raw subject ids
            events = list_events(db, since=0, kind=None, key=r.subject_key, limit=500).items
            job = job_read(db, job_service.get_job(db, r.job_id)) if r.job_id else None
        timeline = [(r.created_at, "created", f"filed{f' by {r.source}' if r.source else ''}; due {r.due_at:%Y-%m-%d}", None)]
        for e in events:
            ours = e.payload.get("request_id") in (None, str(rid))
            if ours or (r.job_id is not None and e.payload.get("job_id") == str(r.job_id)):
                link = f"{PREFIX}/jobs/{e.payload['job_id']}" if e.payload.get("job_id") else None
                timeline.append((e.at, e.kind, f"by {e.actor}", link))
        if job is not None:
            timeline.append((job.created_at, "job", f"{job.kind} job {job.status}", f"{PREFIX}/jobs/{job.id}"))
        if r.completed_at:
            timeline.append((r.completed_at, "completed",
                             f"{r.samples_removed or 0} sample(s) removed; first clean version v{r.clean_version}"
                             if r.clean_version else f"{r.samples_removed or 0} sample(s) removed", None))
        timeline.sort(key=lambda t: t[0])
        return render(request, "request_detail.html", me, r=r, job=job, timeline=timeline)

    # ------------------------------------------------------------------ jobs
    def jobs_data(db, status: str, model: str) -> dict:
        if status and status not in {s.value for s in JobStatus}:
            raise BadInput(f"'{status}' is not a job status")
        models = registry.list_models(db, after=None, limit=500)[:500]
        model_id = registry.get_model(db, model).id if model else None
        jobs = job_reads(db, job_service.list_jobs(db, model_id=model_id, status=status or None, limit=100))
        return {"jobs": jobs, "models": models, "job_status": status, "job_model": model,
                "statuses": [s.value for s in JobStatus]}

    @admin.get("/jobs", response_class=HTMLResponse)
    def jobs_page(request: Request, status: str = "", model: str = ""):
        me = need(request)
        with read_session(factory(request)) as db:
            return render(request, "jobs.html", me, **jobs_data(db, status, model))

    @admin.get("/fragments/jobs", response_class=HTMLResponse)
    def jobs_fragment(request: Request, status: str = "", model: str = ""):
        me = who(request)
        if me is None:
            return HTMLResponse("", status_code=401)
        with read_session(factory(request)) as db:
            return fragment(request, "_jobs_table.html", me, **jobs_data(db, status, model))

    def job_data(db, job_id: uuid.UUID) -> dict:
        job = job_read(db, job_service.get_job(db, job_id))
        return {"job": job, "steps": _step_states(job)}

    @admin.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_detail(request: Request, job_id: uuid.UUID):
        me = need(request)
        with read_session(factory(request)) as db:
            return render(request, "job_detail.html", me, **job_data(db, job_id))

    @admin.get("/fragments/jobs/{job_id}", response_class=HTMLResponse)
    def job_fragment(request: Request, job_id: uuid.UUID):
        me = who(request)
        if me is None:
            return HTMLResponse("", status_code=401)
        with read_session(factory(request)) as db:
            return fragment(request, "_job.html", me, **job_data(db, job_id))

    @admin.post("/jobs/{job_id}/retry")
    async def job_retry(request: Request, job_id: uuid.UUID):
        me, _ = await check_post(request)
        with factory(request).begin() as db:
            job_service.retry_job(db, parent(request).settings, job_id, me.actor)
        return redirect(f"{PREFIX}/jobs/{job_id}", "Job queued again.")

    # ------------------------------------------------------------------ models
    @admin.get("/models", response_class=HTMLResponse)
    def models_page(request: Request):
        me = need(request)
        with read_session(factory(request)) as db:
            models = registry.read_many(db, registry.list_models(db, after=None, limit=500)[:500])
        return render(request, "models.html", me, models=models)

    def model_data(db, name: str, before: int | None = None) -> dict:
        model = registry.get_model(db, name)
        rows = registry.list_versions(db, model, before=before, limit=VERSIONS_PER_PAGE)
        more = rows[VERSIONS_PER_PAGE - 1].number if len(rows) > VERSIONS_PER_PAGE else None
        rows = rows[:VERSIONS_PER_PAGE]
        aliases = registry.aliases(db, model)
        on = {}
        for alias, number in aliases.aliases.items():
            on.setdefault(number, []).append(alias)
        numbers = {v.id: v.number for v in rows}
        versions = [VersionRow(v.number, numbers.get(v.parent_id) if v.parent_id else None, v.parent_id is not None,
                               v.state, v.metrics or {}, v.bound or {}, v.created_at, v.revoked_at, on.get(v.number, []))
                    for v in rows]
        by_number = {v.number: v for v in versions}
        lineage = []
        if versions:  # the newest listed version's parent chain, as far as this page reaches
            v = versions[0]
            while v is not None:
                lineage.append(v)
                v = by_number.get(v.parent) if v.parent else None
        chrono = list(reversed(versions))[-CHART_VERSIONS:]
        kl = [(v.number, y) for v in chrono if (y := _number(v.bound.get("kl_nats"))) is not None]
        acc = [(v.number, y) for v in chrono if (y := _number(v.metrics.get("eval_accuracy"))) is not None]
        active = job_service.active_job(db, model.id)
        return {"model": model, "versions": versions, "lineage": lineage, "aliases": aliases, "more": more, "before": before,
                "active": job_read(db, active) if active else None,
                "kl_chart": line_chart(kl, title="Information bound per version", y_label="kl_nats"),
                "acc_chart": line_chart(acc, title="Eval accuracy per version", y_label="accuracy")}

    @admin.get("/models/{name}", response_class=HTMLResponse)
    def model_detail(request: Request, name: str, before: int | None = None):
        me = need(request)
        with read_session(factory(request)) as db:
            return render(request, "model_detail.html", me, **model_data(db, name, before))

    @admin.get("/fragments/models/{name}", response_class=HTMLResponse)
    def model_fragment(request: Request, name: str, before: int | None = None):
        me = who(request)
        if me is None:
            return HTMLResponse("", status_code=401)
        with read_session(factory(request)) as db:
            return fragment(request, "_model.html", me, **model_data(db, name, before))

    @admin.post("/models/{name}/forget-now")
    async def model_forget_now(request: Request, name: str):
        me, _ = await check_post(request)
        with factory(request).begin() as db:
            job = job_service.forget_now(db, parent(request).settings, registry.get_model(db, name), me.actor)
            job_id, n = job.id, len((job.config or {}).get("request_ids", []))
        return redirect(f"{PREFIX}/jobs/{job_id}", f"Batch started for {name}: {n} request(s).")

    @admin.post("/models/{name}/train")
    async def model_train(request: Request, name: str):
        me, _ = await check_post(request)
        with factory(request).begin() as db:
            job = job_service.create_job(db, parent(request).settings, registry.get_model(db, name), JobKind.train, actor=me.actor)
            job_id = job.id
        return redirect(f"{PREFIX}/jobs/{job_id}", f"Training job started for {name}.")

    @admin.post("/models/{name}/zero")
    async def model_zero(request: Request, name: str):
        me, form = await check_post(request)
        if form.get("confirm") != name:
            raise BadInput(f"To zero the user weights of every user, type the model name '{name}' to confirm.")
        reason = form.get("reason")
        reason = reason.strip()[:1000] if isinstance(reason, str) and reason.strip() else "emergency forget-everyone"
        with factory(request).begin() as db:
            job = job_service.create_job(db, parent(request).settings, registry.get_model(db, name), JobKind.zero,
                                         actor=me.actor, config={"then_retrain": form.get("retrain") == "on", "reason": reason})
            job_id = job.id
        return redirect(f"{PREFIX}/jobs/{job_id}", f"Zero job started for {name}.")

    @admin.post("/models/{name}/promote")
    async def model_promote(request: Request, name: str):
        me, form = await check_post(request)
        ref = form.get("version")
        if not isinstance(ref, str) or not ref.strip().isdigit():
            raise BadInput("Promote needs a version number.")
        with factory(request).begin() as db:
            model = registry.get_model(db, name)
            version = registry.resolve_version(db, model, ref.strip())
            moved = registry.move_alias(db, model, "production", version, me.actor)
            number = version.number
        return redirect(f"{PREFIX}/models/{name}", f"production → v{number}" + ("" if moved else " (already there)"))

    # ------------------------------------------------------------------ subjects
    @admin.get("/subjects", response_class=HTMLResponse)
    def subjects_page(request: Request, subject_id: str = ""):
        me = need(request)
        rec = None
        subject_id = subject_id.strip()
        if len(subject_id) > 256:
            raise BadInput("A subject id has at most 256 characters.")
        if subject_id:
            with read_session(factory(request)) as db:
                rec = receipt(db, secret, subject_id)
        return render(request, "subjects.html", me, rec=rec, subject_id=subject_id)

    # ------------------------------------------------------------------ audit
    def audit_page_data(db, since: int, kind: str, subject_id: str) -> dict:
        key = subject_key(secret, subject_id) if subject_id else None
        return {"page": list_events(db, since=since, kind=kind or None, key=key, limit=100),
                "f": {"since": since, "kind": kind, "subject_id": subject_id}}

    @admin.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request, since: int = 0, kind: str = "", subject_id: str = ""):
        me = need(request)
        if since < 0:
            raise BadInput("'since' is a sequence number (0 or more).")
        with read_session(factory(request)) as db:
            return render(request, "audit.html", me, verification=None, **audit_page_data(db, since, kind, subject_id))

    @admin.post("/audit/verify", response_class=HTMLResponse)
    async def audit_verify(request: Request):
        me, _ = await check_post(request, act=False)  # reading: auditors may verify
        with read_session(factory(request)) as db:
            result = verify_chain(db)
            return render(request, "audit.html", me, verification=result, **audit_page_data(db, 0, "", ""))

    from service.admin import webhooks_view

    webhooks_view.install(admin, templates, settings, webhooks_view.Plumbing(render, need, check_post, redirect, factory, BadInput))
    return admin
