"""The hash chain itself: payloads survive the JSONB round trip bit for bit, and concurrent
appends with real commits form one chain (no forks, no gaps)."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.audit.service import GENESIS, append_event, verify_chain
from service.models import AuditEvent

_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.sampled_from([1e20, -0.0, 1e16, 2.0**60, 5e-324, 1e-7, 0.1 + 0.2, -1.5e300])
    | st.text(max_size=12)
)
_json = st.recursive(_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=10)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.dictionaries(st.text(max_size=8), _json, max_size=4))
def test_any_payload_verifies_after_reading_it_back(db, payload):
    ev = append_event(db, actor="prop", kind="test.payload", payload=payload)
    db.flush()
    db.expire_all()  # re-read every row from PostgreSQL, not from the identity map
    result = verify_chain(db)
    assert result.ok, (result, payload)
    assert result.head_hash == ev.hash


def test_awkward_numbers_keep_their_values(db):
    ev = append_event(db, actor="t", kind="test.numbers", payload={"big": 1e20, "negzero": -0.0, "inf": math.inf, "small": 1e-7, "nul": "a\x00b"})
    db.flush()
    db.expire_all()
    stored = db.execute(select(AuditEvent.payload).where(AuditEvent.seq == ev.seq)).scalar_one()
    assert stored["big"] == 10**20 and stored["negzero"] == 0 and stored["small"] == 1e-7
    assert stored["inf"] == "inf" and stored["nul"] == "a\ufffdb"
    assert verify_chain(db).ok


def test_concurrent_appends_form_one_chain(committed_app, engine):
    n_threads, per_thread = 8, 8
    start = threading.Barrier(n_threads)
    rolled_back = []

    def work(t: int) -> None:
        start.wait(timeout=10)
        for i in range(per_thread):
            try:
                with Session(engine) as s, s.begin():
                    append_event(s, actor=f"thread-{t}", kind="test.concurrent", payload={"t": t, "i": i})
                    if i % 4 == 3:  # an append whose transaction fails must leave no gap
                        raise RuntimeError("abort")
            except RuntimeError:
                rolled_back.append((t, i))

    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        for f in [pool.submit(work, t) for t in range(n_threads)]:
            f.result(timeout=60)

    with Session(engine) as s:
        result = verify_chain(s)
        rows = s.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars().all()
    committed = [r for r in rows if r.kind == "test.concurrent"]
    expected = {(t, i) for t in range(n_threads) for i in range(per_thread)} - set(rolled_back)
    assert len(rolled_back) == n_threads * (per_thread // 4)
    assert {(r.payload["t"], r.payload["i"]) for r in committed} == expected and len(committed) == len(expected)
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))  # no gaps
    assert len({r.prev_hash for r in rows}) == len(rows) and rows[0].prev_hash == GENESIS  # no forks
    assert result.ok and result.events == len(rows) and result.head_hash == rows[-1].hash
