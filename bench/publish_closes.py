"""The publish step's request closes: one at a time (``close_request`` per request: a flush, the
audit lock, a read of the chain's head and an audit insert each, the old publish loop's round
trips) against the batch (``closing_requests``: one flush, one lock, one head read, one audit
insert for all), on PostgreSQL, interleaved in one process. Each round closes ``--requests``
open requests inside a transaction that is rolled back, so every round starts from the same rows.

    python bench/publish_closes.py [--requests 10] [--rounds 30]

Writes bench/results/publish_closes.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api_intake as ai  # noqa: E402

from service.audit.service import append_event  # noqa: E402
from service.core.config import DatabaseSettings  # noqa: E402
from service.core.db import make_engine, make_session_factory  # noqa: E402
from service.deletion_request.service import close_request, closing_requests  # noqa: E402
from service.models import DeletionRequest, Model, RequestStatus  # noqa: E402
from service.models._types import utcnow  # noqa: E402

KIND = dict(actor="system:publish", kind="request.completed")


def seed(factory, n: int) -> list[uuid.UUID]:
    now = utcnow()
    ids = [uuid.uuid4() for _ in range(n)]
    with factory.begin() as s:
        m = Model(name="m", architecture="mlp", architecture_config={}, input_shape=[2], num_classes=2, linearize="all",
                  method_config={})
        s.add(m)
        s.flush()
        for i, rid in enumerate(ids):
            s.add(DeletionRequest(id=rid, subject_id=f"raw-{i}", subject_key=f"{i:064x}", model_id=m.id, status="processing",
                                  open_key=f"open-{i}", created_at=now, due_at=now + timedelta(days=30), attempts=1))
        append_event(s, actor="bench", kind="seed")
    return ids


def one_round(factory, ids, batch: bool) -> float:
    s = factory()
    try:
        s.begin()
        rows = [s.get(DeletionRequest, i) for i in ids]
        model = s.get(Model, rows[0].model_id)  # held, as publish holds its locked model (identity map)
        now = utcnow()
        t0 = time.perf_counter()
        if batch:
            with closing_requests(s, RequestStatus.completed, now=now, **KIND) as close:
                for r in rows:
                    close(r, {"request_id": str(r.id), "model": "m", "clean_version": 2})
        else:
            for r in rows:
                close_request(s, r, RequestStatus.completed, now=now, payload={"request_id": str(r.id), "model": "m",
                                                                               "clean_version": 2}, **KIND)
        s.flush()
        took = time.perf_counter() - t0
        assert model is not None
        return took
    finally:
        s.rollback()
        s.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--database", default="lethe_bench_publish")
    args = ap.parse_args()
    url = ai.recreate_database(args.database)
    engine = make_engine(DatabaseSettings(url=url))
    factory = make_session_factory(engine)
    ids = seed(factory, args.requests)
    times: dict[str, list[float]] = {"one at a time": [], "batch": []}
    for _ in range(3):  # warm-up
        one_round(factory, ids, False), one_round(factory, ids, True)
    for _ in range(args.rounds):
        times["one at a time"].append(one_round(factory, ids, False))
        times["batch"].append(one_round(factory, ids, True))
    engine.dispose()
    base = statistics.median(times["one at a time"])
    rows = [{"path": k, "median_s": statistics.median(v), "min_s": min(v), "ratio_to_one_at_a_time": statistics.median(v) / base}
            for k, v in times.items()]
    lines = [f"Closing {args.requests} requests (PostgreSQL, {args.rounds} interleaved rounds)", "",
             "| path | median | min | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['path']} | {r['median_s'] * 1e3:.1f} ms | {r['min_s'] * 1e3:.1f} ms | {r['ratio_to_one_at_a_time']:.2f} |"
              for r in rows]
    print("\n".join(lines))
    doc = {"command": " ".join(["python", "bench/publish_closes.py", *sys.argv[1:]]), "requests": args.requests,
           "rounds": args.rounds, "rows": rows}
    (ai.RESULTS / "publish_closes.json").write_text(json.dumps(doc, indent=2))
    (ai.RESULTS / "publish_closes.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
