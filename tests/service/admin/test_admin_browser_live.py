"""The dashboard in a real browser (Debian's Chromium through Playwright) against a real service:
uvicorn on a free port in a thread, the test PostgreSQL database, and the embedded in-process
Celery worker (``workers.embedded``) that really trains and forgets.

One browser launch, two contexts (operator, then auditor and requester). Checks what only a
browser can: the live parts change without a page reload, the keyboard reaches and shows focus,
forms work end to end. Screenshots go to ``test-artifacts/screenshots/admin-*.png``; the final
overview is copied to ``service/admin/static/screenshot-overview.png`` for the README.
"""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy.orm import Session

from service.core.config import Settings
from service.client.tokens import create_token
from service.core.security import subject_key
from service.main import create_app
from service.models import DeletionRequest, Model, Role
from service.models._types import utcnow

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[3]
SHOTS = ROOT / "test-artifacts" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic"]
SECRET = "browser-test-secret-key-0123456789-abcdefghij"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def _npz(x, y, subjects, split) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=x, labels=y, subject_ids=np.array(subjects), split=np.array(split))
    return buf.getvalue()


def _register_and_ingest(c: httpx.Client, name: str) -> None:
    rng = np.random.default_rng(7)
    d, classes = 8, 3
    means = rng.normal(size=(classes, d)) * 2.0

    def draw(n):
        y = rng.integers(0, classes, size=n)
        return (means[y] + rng.normal(size=(n, d))).astype(np.float32), y.astype(np.int64)

    r = c.post("/v1/models", json={
        "name": name, "architecture": "mlp",
        "architecture_config": {"in_features": d, "hidden": [8], "num_classes": classes},
        "input_shape": [d], "num_classes": classes, "linearize": "last:1", "batch_window_s": 3600, "auto_approve": False,
        "method_config": {"l2": 1e-3, "noise_std": 1e-3, "core_epochs": 3, "device": "cpu", "max_accuracy_drop": 0.5},
    })
    assert r.status_code == 201, r.text
    for split, n in (("core", 90), ("eval", 60)):
        x, y = draw(n)
        r = c.post(f"/v1/models/{name}/samples", content=_npz(x, y, [f"{split}-{i}" for i in range(n)], split),
                   headers={"content-type": "application/x-npz"})
        assert r.status_code == 201, r.text
    x, y = draw(60)
    subjects = [f"person-{i:02d}" for i in range(20) for _ in range(3)]
    r = c.post(f"/v1/models/{name}/samples", content=_npz(x, y, subjects, "user"), headers={"content-type": "application/x-npz"})
    assert r.status_code == 201, r.text


@pytest.fixture
def live_service(clean_tables, database_url, tmp_path):
    """A real uvicorn + the embedded worker on the test database; yields (base_url, tokens, http)."""
    import uvicorn

    from workers.embedded import EmbeddedRunner

    settings = Settings(
        environment="test",
        database={"url": database_url},
        broker={"url": "memory://"},
        storage={"root": tmp_path / "artifacts"},
        security={"secret_key": SECRET},
        pipeline={"heartbeat_interval_s": 0.5},
    )
    tokens = {}
    with Session(clean_tables) as s, s.begin():
        for role in (Role.admin, Role.operator, Role.auditor, Role.requester):
            tokens[role.value] = create_token(s, role, f"browser-{role.value}")[1]
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn-admin-test", daemon=True)
    thread.start()
    _wait(lambda: server.started, 30, "uvicorn to start", 0.05)
    runner = EmbeddedRunner(settings, tick_s=0.5).start()
    base = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tokens['admin']}"}, timeout=60)
    try:
        yield base, tokens, http, clean_tables
    finally:
        http.close()
        runner.stop()
        server.should_exit = True
        thread.join(timeout=15)


def _job_done(http: httpx.Client, job_id: str, timeout: float = 180) -> dict:
    def done():
        j = http.get(f"/v1/jobs/{job_id}").json()
        return j if j["status"] in ("succeeded", "failed", "cancelled") else None

    return _wait(done, timeout, f"job {job_id}")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")
def test_operator_and_auditor_in_the_browser(live_service):
    from playwright.sync_api import expect, sync_playwright

    base, tokens, http, engine = live_service
    _register_and_ingest(http, "shop")
    job = _job_done(http, http.post("/v1/models/shop/train").json()["id"])
    assert job["status"] == "succeeded", job
    rid = http.post("/v1/deletion-requests", json={"subject_id": "person-03", "model": "shop"}).json()["id"]
    assert http.get(f"/v1/deletion-requests/{rid}").json()["status"] == "awaiting_approval"
    # older open requests with near deadlines, so the SLA panel has every colour
    with Session(engine) as s, s.begin():
        model_id = s.query(Model.id).filter(Model.name == "shop").scalar()
        now = utcnow()
        for i, days in enumerate((-2, 1.5, 6)):
            key = subject_key(SECRET, f"waiting-{i}")
            s.add(DeletionRequest(id=uuid.uuid4(), subject_id=f"waiting-{i}", subject_key=key, model_id=model_id,
                                  status="awaiting_approval", open_key=f"{key}:{model_id}",
                                  created_at=now - timedelta(days=30 - days), due_at=now + timedelta(days=days)))

    SHOTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=20_000)  # the machine is shared: generous waits, not sleeps
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(20_000)
            page.goto(base + "/admin/")  # not signed in: sent to the sign-in page
            expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
            page.screenshot(path=str(SHOTS / "admin-login.png"))
            page.get_by_label("API token").fill(tokens["operator"])
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
            expect(page.locator('td[data-status="awaiting_approval"]')).to_have_text("4")
            expect(page.locator("#overdue")).to_have_text("1 overdue")
            expect(page.locator("#sla [data-level=red]")).to_have_count(2)
            expect(page.locator("#sla [data-level=amber]")).to_have_count(1)

            # live: a request filed elsewhere shows up without a reload
            page.evaluate("window.__noReload = 'still here'")
            http.post("/v1/deletion-requests", json={"subject_id": "person-04", "model": "shop"})
            expect(page.locator('td[data-status="awaiting_approval"]')).to_have_text("5", timeout=10_000)
            assert page.evaluate("window.__noReload") == "still here"
            page.screenshot(path=str(SHOTS / "admin-overview-before.png"), full_page=True)

            # keyboard: the skip link comes first, then the navigation; focus is visible
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.textContent") == "Skip to content"
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.textContent") == "Overview"
            assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
            page.keyboard.press("Tab")
            page.keyboard.press("Enter")
            expect(page.get_by_role("heading", name="Deletion requests")).to_be_visible()

            # requests: filter by subject id, approve one with the checkbox
            page.get_by_label("Subject id").fill("person-03")
            page.get_by_role("button", name="Filter").click()
            expect(page.locator("#requests tbody tr")).to_have_count(1)
            page.get_by_label(f"Select request {rid}").check()
            page.screenshot(path=str(SHOTS / "admin-requests.png"), full_page=True)
            page.get_by_role("button", name="Approve selected").click()
            expect(page.locator("#flash")).to_have_text("Approved 1 request(s).")
            assert http.get(f"/v1/deletion-requests/{rid}").json()["status"] == "queued"

            # jobs: run a batch now and watch it finish on the job page, without reloads
            page.get_by_role("link", name="Jobs", exact=True).click()
            page.get_by_role("button", name="Run batch now for shop").click()
            expect(page.locator("#flash")).to_contain_text("Batch started for shop: 1 request(s).")
            page.evaluate("window.__noReload = 'job page'")
            expect(page.locator("#job-status")).to_have_text("succeeded", timeout=120_000)
            assert page.evaluate("window.__noReload") == "job page"
            expect(page.locator("#steps [data-state=done]")).to_have_count(4)
            expect(page.locator("#job-result")).to_have_text("v2")
            page.screenshot(path=str(SHOTS / "admin-job.png"), full_page=True)
            assert http.get(f"/v1/deletion-requests/{rid}").json()["status"] == "completed"

            # the model: the new version, aliases, the version that held the subject revoked
            page.locator("#job-result").click()
            expect(page.locator("#versions")).to_contain_text("v2")
            expect(page.locator("#aliases")).to_contain_text("latest → v2")
            expect(page.locator("tr#v1")).to_have_class("revoked")
            expect(page.locator("#lineage")).to_contain_text("v2 ← v1 (revoked)")
            page.get_by_label("Promote version to production").fill("2")
            page.get_by_role("button", name="Promote").click()
            expect(page.locator("#flash")).to_contain_text("production → v2")  # auto-promoted already: said so
            expect(page.locator("#aliases")).to_contain_text("production → v2")
            page.screenshot(path=str(SHOTS / "admin-model.png"), full_page=True)

            # the request's timeline and the subject's receipt
            page.goto(f"{base}/admin/requests/{rid}")
            expect(page.locator("#timeline")).to_contain_text("completed")
            expect(page.locator("#timeline")).to_contain_text("job")
            page.screenshot(path=str(SHOTS / "admin-request.png"), full_page=True)
            page.get_by_role("link", name="Subjects").click()
            page.get_by_label("Subject id").fill("person-03")
            page.get_by_role("button", name="Look up").click()
            expect(page.locator("#subject-models")).to_contain_text("v2")
            page.screenshot(path=str(SHOTS / "admin-subject.png"), full_page=True)

            # the audit chain
            page.get_by_role("link", name="Audit").click()
            page.get_by_role("button", name="Verify the chain").click()
            expect(page.locator("#verification")).to_contain_text("Chain verified")
            page.screenshot(path=str(SHOTS / "admin-audit.png"), full_page=True)

            page.get_by_role("link", name="Overview").click()
            expect(page.locator("#latest-versions")).to_contain_text("v2")
            page.screenshot(path=str(SHOTS / "admin-overview.png"), full_page=True)
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

            # the auditor reads everything and sees no action; a requester token is refused
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.goto(base + "/admin/login")
            page.get_by_label("API token").fill(tokens["requester"])
            page.get_by_role("button", name="Sign in").click()
            expect(page.locator("#login-error")).to_contain_text("cannot use the dashboard")
            page.get_by_label("API token").fill(tokens["auditor"])
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
            page.goto(base + "/admin/models/shop")
            expect(page.locator("#versions")).to_contain_text("v2")
            expect(page.get_by_role("button", name="Run batch now")).to_have_count(0)
            page.goto(base + "/admin/requests")
            expect(page.get_by_role("button", name="Approve selected")).to_have_count(0)
            page.screenshot(path=str(SHOTS / "admin-auditor-requests.png"), full_page=True)
        finally:
            browser.close()
    shutil.copy(SHOTS / "admin-overview.png", ROOT / "service" / "admin" / "static" / "screenshot-overview.png")
