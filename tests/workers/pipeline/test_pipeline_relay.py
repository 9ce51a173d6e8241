"""The outbox relay on real PostgreSQL commits: after-commit only, once each, concurrent-safe."""

from __future__ import annotations

import threading
import time
from collections import Counter

from sqlalchemy import select

from service.job.outbox import QUEUE_GPU, enqueue
from service.models import OutboxMessage
from workers.relay import relay_outbox


class Recorder:
    def __init__(self, delay: float = 0.0, fail_first: int = 0) -> None:
        self.sent: list[tuple] = []
        self.lock = threading.Lock()
        self.delay, self.fail_left = delay, fail_first

    def __call__(self, name, args=None, task_id=None, queue=None):
        with self.lock:
            if self.fail_left:
                self.fail_left -= 1
                raise ConnectionError("broker down")
        time.sleep(self.delay)
        with self.lock:
            self.sent.append((name, tuple(args), task_id, queue))


def _enqueue(rt, n: int) -> list[str]:
    ids = [f"job-{i:03d}" for i in range(n)]
    with rt.session_factory.begin() as s:
        for i in ids:
            enqueue(s, "job.run", task_id=i, args=[i], queue=QUEUE_GPU)
    return ids


def test_only_committed_messages_are_sent(rt):
    rec = Recorder()
    with rt.session_factory() as s:
        s.begin()
        enqueue(s, "job.run", task_id="uncommitted", args=["uncommitted"], queue=QUEUE_GPU)
        s.flush()
        assert relay_outbox(rt.session_factory, rec) == 0
        s.commit()
    assert relay_outbox(rt.session_factory, rec) == 1
    assert rec.sent == [("job.run", ("uncommitted",), "uncommitted", "gpu")]
    assert relay_outbox(rt.session_factory, rec) == 0  # sent once, marked sent


def test_concurrent_relays_send_each_message_exactly_once(rt):
    ids = _enqueue(rt, 30)
    rec = Recorder(delay=0.005)
    start = threading.Barrier(2)
    rounds = Counter()

    def relay(name):
        start.wait()
        for _ in range(50):
            n = relay_outbox(rt.session_factory, rec, batch=4)
            rounds[name] += n
            if n == 0:
                with rt.session_factory() as s:
                    if s.execute(select(OutboxMessage.id).where(OutboxMessage.sent_at.is_(None))).first() is None:
                        return

    threads = [threading.Thread(target=relay, args=(f"r{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    counts = Counter(task_id for _, _, task_id, _ in rec.sent)
    assert sorted(counts) == ids and set(counts.values()) == {1}
    assert rounds["r0"] > 0 and rounds["r1"] > 0  # both relays did part of the work
    with rt.session_factory() as s:
        assert all(m.sent_at is not None for m in s.execute(select(OutboxMessage)).scalars())


def test_a_failed_send_stays_for_the_next_round(rt):
    _enqueue(rt, 2)
    rec = Recorder(fail_first=1)
    assert relay_outbox(rt.session_factory, rec) == 0
    with rt.session_factory() as s:
        first = s.execute(select(OutboxMessage).order_by(OutboxMessage.id)).scalars().first()
        assert first.sent_at is None and first.attempts == 1 and "broker down" in first.last_error
    assert relay_outbox(rt.session_factory, rec) == 2
    assert [t for _, _, t, _ in rec.sent] == ["job-000", "job-001"]
