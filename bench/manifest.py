"""`latest` manifest latency (DESIGN §9: p99 ≤ 5 ms; a 304 carries no body).

Against a real PostgreSQL and a real uvicorn (1 worker, uvloop/httptools, no access log), in one
run: the same server with the in-process manifest cache off (every request reads the database:
the baseline), on with every hit going through FastAPI's route (``LETHE_API__MANIFEST_FAST_PATH=
false``), and on with hits answered by the fast path ahead of routing (the default). For each,
N GETs of ``/v1/models/bench/versions/latest`` without ``If-None-Match`` (200 with the manifest)
and N with the current ETag (304, no body), over ``--concurrency`` keep-alive connections
(default 1: latency, not queueing); p50/p99 per status. ``--access-log`` adds a fourth case: the
fast path with uvicorn's access log on (what ``lethe serve`` runs with), written to a file.
The cases are interleaved, ``--rounds`` times. Writes bench/results/manifest.{json,md}.

    .venv/bin/python bench/manifest.py                  # 3,000 requests per case
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api_intake as ai  # noqa: E402

from service.core.config import DatabaseSettings  # noqa: E402
from service.core.db import make_engine, make_session_factory  # noqa: E402
from service.client.tokens import create_token  # noqa: E402
from service.model_registry.service import move_alias  # noqa: E402
from service.models import Model, ModelVersion, Role  # noqa: E402
from service.models._types import utcnow  # noqa: E402


def seed(url: str) -> str:
    engine = make_engine(DatabaseSettings(url=url))
    try:
        with make_session_factory(engine).begin() as s:
            m = Model(name="bench", architecture="mlp", architecture_config={"in_features": 64, "num_classes": 10, "hidden": [128]},
                      input_shape=[64], num_classes=10, linearize="all", method_config={}, auto_approve=True, sla_days=30)
            s.add(m)
            s.flush()
            v = None
            for n in range(1, 4):
                v = ModelVersion(model_id=m.id, number=n, artifact_uri=f"file:///nonexistent/{n}", sha256=f"{n:064x}", size_bytes=1000,
                                 metrics={"eval_accuracy": 0.9}, bound={"kl_nats": 1e-9}, state="live", created_at=utcnow(),
                                 parent_id=v.id if v else None)
                s.add(v)
                s.flush()
            move_alias(s, m, "latest", v, "bench", system=True)
            _, token = create_token(s, Role.serving, name="bench-serving")
        return token
    finally:
        engine.dispose()


# (label, manifest cache, fast path, access log)
CASES = [("off (baseline)", False, False, False), ("on, via route", True, False, False), ("on, fast path", True, True, False)]
ACCESS_LOG_CASE = ("on, fast path, access log", True, True, True)


def start(url: str, port: int, cache: bool, fast: bool, access_log: bool, log: Path) -> subprocess.Popen:
    saved = ai.uvicorn_command
    if access_log:  # the same command, with uvicorn's access log on (its default) at level info
        def with_access_log(port: int, workers: int) -> list[str]:
            cmd = [a for a in saved(port, workers) if a != "--no-access-log"]
            cmd[cmd.index("--log-level") + 1] = "info"
            return cmd

        ai.uvicorn_command = with_access_log
    os.environ["LETHE_API__MANIFEST_CACHE"] = "true" if cache else "false"
    os.environ["LETHE_API__MANIFEST_FAST_PATH"] = "true" if fast else "false"
    try:
        return ai.start_server(url, port, 1, log)
    finally:
        del os.environ["LETHE_API__MANIFEST_CACHE"], os.environ["LETHE_API__MANIFEST_FAST_PATH"]
        ai.uvicorn_command = saved


async def load(port: int, raw: bytes, n: int, concurrency: int, expect: int) -> dict:
    conns = [await ai.Connection.open(port) for _ in range(concurrency)]
    for c in conns:  # warm-up (and the first, filling request)
        for _ in range(20):
            await c.request(raw)
    lat: list[float] = []
    sizes: set[int] = set()
    bad = 0
    left = n

    async def worker(c):
        nonlocal left, bad
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            status, body = await c.request(raw)
            lat.append(time.perf_counter() - t0)
            sizes.add(len(body))
            bad += status != expect
    t = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    el = time.perf_counter() - t
    for c in conns:
        c.close()
    lat.sort()
    pct = lambda p: round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 2)  # noqa: E731
    return {"status": expect, "n": n, "rps": round(n / el, 1), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": round(1000 * lat[-1], 2),
            "wrong_status": bad, "body_bytes": sorted(sizes)}


def get(token: str, etag: str | None) -> bytes:
    return (b"GET /v1/models/bench/versions/latest HTTP/1.1\r\nHost: bench\r\n" + f"Authorization: Bearer {token}\r\n".encode()
            + (f"If-None-Match: {etag}\r\n".encode() if etag else b"") + b"\r\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--database", default="lethe_bench_manifest")
    ap.add_argument("--rounds", type=int, default=2, help="times each case runs (interleaved)")
    ap.add_argument("--access-log", action="store_true", help="also the fast path with uvicorn's access log on")
    ap.add_argument("--in-process-hits", type=int, default=3000, help="hits per in-process CPU phase (0: skip)")
    args = ap.parse_args()
    url = ai.recreate_database(args.database)
    token = seed(url)
    rows = []
    cases = CASES + ([ACCESS_LOG_CASE] if args.access_log else [])
    load_before = os.getloadavg()[0]
    for rnd in range(args.rounds):
        for label, cache, fast, access_log in cases:  # interleaved: every case once per round
            port = ai.free_port()
            (ai.ROOT / "var").mkdir(exist_ok=True)
            proc = start(url, port, cache, fast, access_log, ai.ROOT / "var" / "bench-manifest-uvicorn.log")
            try:
                status, _ = asyncio.run(_one(port, get(token, None)))
                etag = _ETAG[0]
                for raw, expect in ((get(token, None), 200), (get(token, etag), 304)):
                    r = asyncio.run(load(port, raw, args.requests, args.concurrency, expect))
                    r.update(case=label, cache=cache, fast_path=fast, access_log=access_log, round=rnd + 1)
                    rows.append(r)
                    print(r, flush=True)
            finally:
                ai.stop_server(proc)
    load_after = os.getloadavg()[0]
    cpu = in_process(url, token, args.in_process_hits, 3) if args.in_process_hits else []
    doc = {"command": "python bench/manifest.py" + "".join(f" {a}" for a in sys.argv[1:]), "rows": rows,
           "machine": "2-core shared VM; load generator, uvicorn (1 worker) and PostgreSQL share the cores",
           "load_average_1m": [load_before, load_after], "in_process": cpu}
    md = ["| round | cache | status | requests | req/s | p50 ms | p99 ms | max ms | body bytes |",
          "|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        md.append(f"| {r['round']} | {r['case']} | {r['status']} | {r['n']} | {r['rps']:.0f} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['body_bytes']} |")
    text = (f"Command: `{doc['command']}`, {args.concurrency} keep-alive connections; load average (1 min) "
            f"{load_before:.1f} before / {load_after:.1f} after.\n\n" + "\n".join(md) + "\n")
    if cpu:
        text += ("\nIn-app CPU per cached hit (ASGI app called in-process, no uvicorn; µs, each round):\n\n"
                 "| path | status | µs per hit |\n|---|---|---|\n")
        for fast in (False, True):
            for status in (200, 304):
                each = " / ".join(str(r["cpu_us_per_hit"]) for r in cpu if r["fast_path"] == fast and r["status"] == status)
                text += f"| {'fast path' if fast else 'route'} | {status} | {each} |\n"
    print(text)
    ai.RESULTS.mkdir(parents=True, exist_ok=True)
    (ai.RESULTS / "manifest.json").write_text(json.dumps(doc, indent=2))
    (ai.RESULTS / "manifest.md").write_text(text)


_ETAG: list[str] = [""]


def in_process(url: str, token: str, n: int, rounds: int) -> list[dict]:
    """CPU per cached hit inside the app (the ASGI app called directly: no uvicorn, no socket),
    with and without the fast path, alternating ``rounds`` times."""
    from service.core.config import Settings
    from service.main import create_app

    def scope(etag: str | None) -> dict:
        headers = [(b"host", b"bench"), (b"authorization", f"Bearer {token}".encode())]
        headers += [(b"if-none-match", etag.encode())] if etag else []
        return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
                "path": "/v1/models/bench/versions/latest", "raw_path": b"/v1/models/bench/versions/latest", "root_path": "",
                "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}

    async def one(app, sc: dict) -> list[dict]:
        out: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            out.append(message)

        await app(dict(sc), receive, send)
        return out

    async def run() -> list[dict]:
        apps = {fast: create_app(Settings(environment="test", database={"url": url}, storage={"root": str(ai.ROOT / "var" / "bench-artifacts")},
                                          security={"secret_key": ai.SECRET}, api={"manifest_fast_path": fast})) for fast in (False, True)}
        contexts = [app.router.lifespan_context(app) for app in apps.values()]
        for c in contexts:
            await c.__aenter__()
        try:
            for app in apps.values():
                while not app.state.manifests.ready:
                    await asyncio.sleep(0.05)
            first = await one(apps[True], scope(None))
            etag = dict(first[0]["headers"])[b"etag"].decode()
            out = []
            for rnd in range(rounds):
                for fast, app in apps.items():
                    for sc, status in ((scope(None), 200), (scope(etag), 304)):
                        for _ in range(50):
                            assert (await one(app, sc))[0]["status"] == status
                        c0 = time.process_time()
                        for _ in range(n):
                            await one(app, sc)
                        out.append({"round": rnd + 1, "fast_path": fast, "status": status, "n": n,
                                    "cpu_us_per_hit": round((time.process_time() - c0) / n * 1e6, 1)})
                        print(out[-1], flush=True)
            return out
        finally:
            for c in contexts:
                await c.__aexit__(None, None, None)

    return asyncio.run(run())


async def _one(port: int, raw: bytes):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"etag:"):
            _ETAG[0] = line.split(b":", 1)[1].strip().decode()
    writer.close()
    return int(head[9:12]), head


if __name__ == "__main__":
    main()
