"""The dashboard in a real browser (Debian's Chromium via Playwright) against a real service:
uvicorn, a Celery worker and beat on Redis, PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import make_data, register_and_ingest, wait_job

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic"]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/browser.sh installs it)")
def test_operator_flow_in_the_browser(stack):
    from playwright.sync_api import expect, sync_playwright

    c = stack.http
    register_and_ingest(c, "shop", make_data(), method_config={"core_epochs": 5})
    assert wait_job(stack, c, c.post("/v1/models/shop/train").json()["id"])["status"] == "succeeded", stack.logs()
    # a model that wants manual approval, so the operator approves in the browser
    with stack.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE models SET auto_approve = false WHERE name = 'shop'")
    rid = c.post("/v1/deletion-requests", json={"subject_id": "person-003", "model": "shop"}).json()["id"]
    assert c.get(f"/v1/deletion-requests/{rid}").json()["status"] == "awaiting_approval"

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(stack.base + "/admin/login")
        page.screenshot(path=str(SHOTS / "login.png"))
        page.get_by_label("API token").fill(stack.token)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        expect(page.locator('td[data-status="awaiting_approval"]')).to_have_text("1")
        page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)

        page.get_by_role("link", name="Requests").first.click()
        page.get_by_label(f"Select request {rid}").check()
        page.screenshot(path=str(SHOTS / "requests.png"), full_page=True)
        page.get_by_role("button", name="Approve selected").click()
        expect(page.locator("td.status").first).to_have_text("queued")

        page.goto(stack.base + "/admin/models/shop")
        page.get_by_role("button", name="Run batch now").click()
        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=120_000)
        page.screenshot(path=str(SHOTS / "job.png"), full_page=True)

        page.goto(stack.base + "/admin/models/shop")
        expect(page.locator("#versions")).to_contain_text("v2")
        expect(page.locator("#aliases")).to_contain_text("latest → v2")
        page.screenshot(path=str(SHOTS / "model.png"), full_page=True)

        page.goto(stack.base + "/admin/subjects?subject_id=person-003")
        expect(page.locator("main")).to_contain_text("shop")
        page.screenshot(path=str(SHOTS / "subject.png"), full_page=True)

        page.goto(stack.base + "/admin/audit")
        page.get_by_role("button", name="Verify the chain").click()
        expect(page.locator("#verification")).to_contain_text("Chain verified")
        page.screenshot(path=str(SHOTS / "audit.png"), full_page=True)

        page.goto(stack.base + "/admin/")
        expect(page.locator("#latest-versions")).to_contain_text("v2")
        page.screenshot(path=str(SHOTS / "overview-after.png"), full_page=True)
        browser.close()
    assert c.get(f"/v1/deletion-requests/{rid}").json()["status"] == "completed"
    shutil.copy(SHOTS / "overview-after.png", ROOT / "service" / "admin" / "static" / "screenshot-overview.png")
