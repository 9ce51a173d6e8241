"""Races settled by the database: real commits (committed_app), many threads at once."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from service.models import AuditEvent, DeletionRequest

URL = "/v1/deletion-requests"


def _count(app, *where) -> int:
    with app.app.state.session_factory() as s:
        return s.scalar(select(func.count()).select_from(DeletionRequest).where(*where))


def _parallel(n: int, fn, workers: int = 16) -> list:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, range(n)))


def test_one_idempotency_key_makes_one_row(committed_app, committed_model):
    committed_model(committed_app.app, "m1")
    headers = committed_app.auth("requester") | {"Idempotency-Key": "same-key"}

    def create(_i):
        return committed_app.post(URL, json={"subject_id": "race-1", "model": "m1"}, headers=headers)

    results = _parallel(50, create)
    codes = Counter(r.status_code for r in results)
    assert codes == {202: 1, 200: 49}, codes
    assert len({r.json()["id"] for r in results}) == 1
    assert _count(committed_app) == 1


def test_concurrent_creates_for_one_subject_merge(committed_app, committed_model):
    committed_model(committed_app.app, "m1")

    def create(i):
        return committed_app.post(
            URL, json={"subject_id": "race-2", "model": "m1"}, headers=committed_app.auth("requester") | {"Idempotency-Key": f"k{i}"}
        )

    results = _parallel(30, create)
    assert Counter(r.status_code for r in results) == {202: 1, 200: 29}
    assert {r.headers["location"] for r in results} == {results[0].headers["location"]}
    assert _count(committed_app) == 1


def test_many_subjects_at_once_are_all_stored(committed_app, committed_model):
    committed_model(committed_app.app, "m1")

    def create(i):
        return committed_app.post(URL, json={"subject_id": f"bulk-{i}", "model": "m1"}, headers=committed_app.auth("requester"))

    results = _parallel(200, create)
    assert all(r.status_code == 202 for r in results), Counter(r.status_code for r in results)
    ids = {r.json()["id"] for r in results}
    assert len(ids) == 200
    with committed_app.app.state.session_factory() as s:
        stored = {str(i) for i in s.scalars(select(DeletionRequest.id))}
    assert ids <= stored and len(stored) == 200


def _race(client, rid, actions):
    def act(i):
        action = actions[i]
        role = "requester" if action == "cancel" else "operator"
        body = {"reason": "no"} if action == "deny" else None
        return action, client.post(f"{URL}/{rid}/{action}", json=body, headers=client.auth(role))

    return _parallel(len(actions), act, workers=len(actions))


def test_approve_and_deny_race_has_one_winner(committed_app, committed_model):
    committed_model(committed_app.app, "manual", auto_approve=False)
    for i in range(20):
        rid = committed_app.post(
            URL, json={"subject_id": f"ad-{i}", "model": "manual"}, headers=committed_app.auth("requester")
        ).json()["id"]
        results = _race(committed_app, rid, ["approve", "deny"])
        winners = [(a, r) for a, r in results if r.status_code == 200]
        losers = [(a, r) for a, r in results if r.status_code != 200]
        assert len(winners) == 1 and len(losers) == 1, [(a, r.status_code) for a, r in results]
        win_action, win = winners[0]
        expected = {"approve": "queued", "deny": "denied"}[win_action]
        assert win.json()["status"] == expected
        assert losers[0][1].status_code == 409 and losers[0][1].json()["current_status"] == expected
        final = committed_app.get(f"{URL}/{rid}", headers=committed_app.auth("operator")).json()
        assert final["status"] == expected
    with committed_app.app.state.session_factory() as s:
        kinds = Counter(s.scalars(select(AuditEvent.kind)))
    assert kinds["deletion_request.approved"] + kinds["deletion_request.denied"] == 20


def test_cancel_and_approve_race_is_consistent(committed_app, committed_model):
    """Cancel is legal from queued, so approve-then-cancel is two successes; cancel-then-approve
    is one success and a 409. Either way the request ends cancelled, and every success is one
    audit event in the order the row lock granted."""
    committed_model(committed_app.app, "manual", auto_approve=False)
    outcomes = Counter()
    for i in range(20):
        rid = committed_app.post(
            URL, json={"subject_id": f"ca-{i}", "model": "manual"}, headers=committed_app.auth("requester")
        ).json()["id"]
        results = dict(_race(committed_app, rid, ["cancel", "approve"]))
        assert results["cancel"].status_code == 200
        assert results["cancel"].json()["status"] == "cancelled"
        final = committed_app.get(f"{URL}/{rid}", headers=committed_app.auth("operator")).json()
        assert final["status"] == "cancelled" and final["subject_id"] is None
        with committed_app.app.state.session_factory() as s:
            events = list(
                s.scalars(
                    select(AuditEvent.kind)
                    .where(AuditEvent.payload["request_id"].as_string() == rid)
                    .order_by(AuditEvent.seq)
                )
            )
        if results["approve"].status_code == 200:
            outcomes["approve-first"] += 1
            assert events == ["deletion_request.approved", "deletion_request.cancelled"]
            assert final["approved_by"] is not None
        else:
            outcomes["cancel-first"] += 1
            assert results["approve"].status_code == 409
            assert results["approve"].json()["current_status"] == "cancelled"
            assert events == ["deletion_request.cancelled"]
            assert final["approved_by"] is None
    assert sum(outcomes.values()) == 20
