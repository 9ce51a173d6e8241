"""Models and their versions: the model list, one model's versions, lineage, aliases and charts
(also a polled fragment), and its actions: run a batch now, train, zero, promote."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from service.admin.auth import check_post, need, who
from service.admin.charts import line_chart
from service.admin.web import PREFIX, BadInput, bound_points, factory, fragment, number, redirect, render, settings, text_field
from service.core.db import read_session
from service.job import service as job_service
from service.job.router import to_read as job_read
from service.model_registry import service as registry
from service.models import JobKind

router = APIRouter()
NAV = ("/models", "Models")
CHART_VERSIONS = 60
VERSIONS_PER_PAGE = 50


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


def _model_data(db: Session, name: str, before: int | None = None) -> dict:
    model = registry.get_model(db, name)
    rows = registry.list_versions(db, model, before=before, limit=VERSIONS_PER_PAGE)
    more = rows[VERSIONS_PER_PAGE - 1].number if len(rows) > VERSIONS_PER_PAGE else None
    rows = rows[:VERSIONS_PER_PAGE]
    aliases = registry.aliases(db, model)
    on = {}
    for alias, n in aliases.aliases.items():
        on.setdefault(n, []).append(alias)
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
    kl, what, y_label = bound_points([(v.number, v.bound or {}) for v in chrono])
    acc = [(v.number, y) for v in chrono if (y := number(v.metrics.get("eval_accuracy"))) is not None]
    active = job_service.active_job(db, model.id)
    return {"model": model, "versions": versions, "lineage": lineage, "aliases": aliases, "more": more, "before": before,
            "active": job_read(db, active) if active else None,
            "kl_chart": line_chart(kl, title=what if y_label == "epsilon_spent" else what.capitalize(), y_label=y_label),
            "acc_chart": line_chart(acc, title="Eval accuracy per version", y_label="accuracy")}


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request):
    me = need(request)
    with read_session(factory(request)) as db:
        models = registry.read_many(db, registry.list_models(db, after=None, limit=500)[:500])
    return render(request, "models.html", me, models=models)


@router.get("/models/{name}", response_class=HTMLResponse)
def model_detail(request: Request, name: str, before: int | None = None):
    me = need(request)
    with read_session(factory(request)) as db:
        return render(request, "model_detail.html", me, **_model_data(db, name, before))


@router.get("/fragments/models/{name}", response_class=HTMLResponse)
def model_fragment(request: Request, name: str, before: int | None = None):
    me = who(request)
    if me is None:
        return HTMLResponse("", status_code=401)
    with read_session(factory(request)) as db:
        return fragment(request, "_model.html", me, **_model_data(db, name, before))


@router.post("/models/{name}/forget-now")
async def model_forget_now(request: Request, name: str):
    me, _ = await check_post(request)
    with factory(request).begin() as db:
        job = job_service.forget_now(db, settings(request), registry.get_model(db, name), me.actor)
        job_id, n = job.id, len((job.config or {}).get("request_ids", []))
    return redirect(f"{PREFIX}/jobs/{job_id}", f"Batch started for {name}: {n} request(s).")


@router.post("/models/{name}/train")
async def model_train(request: Request, name: str):
    me, _ = await check_post(request)
    with factory(request).begin() as db:
        job = job_service.create_job(db, settings(request), registry.get_model(db, name), JobKind.train, actor=me.actor)
        job_id = job.id
    return redirect(f"{PREFIX}/jobs/{job_id}", f"Training job started for {name}.")


@router.post("/models/{name}/zero")
async def model_zero(request: Request, name: str):
    me, form = await check_post(request)
    if form.get("confirm") != name:
        raise BadInput(f"To zero the user weights of every user, type the model name '{name}' to confirm.")
    reason = text_field(form, "reason") or "emergency forget-everyone"
    with factory(request).begin() as db:
        job = job_service.create_job(db, settings(request), registry.get_model(db, name), JobKind.zero,
                                     actor=me.actor, config={"then_retrain": form.get("retrain") == "on", "reason": reason})
        job_id = job.id
    return redirect(f"{PREFIX}/jobs/{job_id}", f"Zero job started for {name}.")


@router.post("/models/{name}/promote")
async def model_promote(request: Request, name: str):
    me, form = await check_post(request)
    ref = form.get("version")
    if not isinstance(ref, str) or not ref.strip().isdigit():
        raise BadInput("Promote needs a version number.")
    with factory(request).begin() as db:
        model = registry.get_model(db, name)
        version = registry.resolve_version(db, model, ref.strip())
        moved = registry.move_alias(db, model, "production", version, me.actor)
        n = version.number
    return redirect(f"{PREFIX}/models/{name}", f"production → v{n}" + ("" if moved else " (already there)"))
