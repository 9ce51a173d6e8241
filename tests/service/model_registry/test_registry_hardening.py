"""Inputs that used to reach the database or memory unchecked: each must be a 4xx that says
what was wrong, and write nothing."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from safetensors.numpy import save as st_save
from sqlalchemy import func, select

from service.models import Model, Sample, SampleChunk

SPEC = {"name": "hard", "architecture": "mlp", "input_shape": [2], "num_classes": 3}


@pytest.fixture
def model(client, db):
    assert client.post("/v1/models", json=SPEC, headers=client.auth("admin")).status_code == 201
    return db.execute(select(Model)).scalar_one()


def _nothing_written(client, db):
    assert db.execute(select(func.count()).select_from(Sample)).scalar_one() == 0
    assert db.execute(select(func.count()).select_from(SampleChunk)).scalar_one() == 0
    assert list(client.app.state.store.root.rglob("*.safetensors")) == []


def _post_raw(client, path, body: bytes, ctype="application/json"):
    return client.post(path, content=body, headers={**client.auth("admin"), "content-type": ctype})


@pytest.mark.parametrize("doc,field,needle", [
    ({"method_config": {"l2": float("inf")}}, "l2", "finite"),
    ({"method_config": {"noise_std": float("nan")}}, "noise_std", "finite"),
    ({"method_config": {"max_kl_per_release": float("inf")}}, "max_kl_per_release", "finite"),
    ({"architecture_config": {"hidden": [8, float("nan")]}}, "architecture_config", "hidden[1]"),
    ({"architecture_config": {"act": "re\u0000lu"}}, "architecture_config", "NUL"),
    ({"architecture_config": {"a\u0000": 1}}, "architecture_config", "NUL"),
])
def test_registration_refuses_what_jsonb_cannot_hold(client, db, doc, field, needle):
    # json.dumps writes NaN/Infinity literals, which the request parser accepts: the schema must refuse them.
    r = _post_raw(client, "/v1/models", json.dumps({**SPEC, **doc}).encode())
    assert r.status_code == 422, r.text
    assert any(field in e["field"] for e in r.json()["errors"]) and needle in r.text
    assert db.execute(select(func.count()).select_from(Model)).scalar_one() == 0


def test_huge_json_label_is_a_422_not_an_overflow(client, db, model):
    rows = [{"subject_id": "a", "split": "user", "label": 0, "x": [0.0, 1.0]},
            {"subject_id": "b", "split": "user", "label": 10**30, "x": [0.0, 1.0]}]
    r = client.post("/v1/models/hard/samples", json={"samples": rows}, headers=client.auth("admin"))
    assert r.status_code == 422 and r.json()["type"].endswith("invalid-tensor"), r.text
    assert "at row 1" in r.json()["detail"] and r.json()["row"] == 1
    _nothing_written(client, db)


def test_compressed_npz_is_refused_from_its_headers_before_decompressing(client, db, model, monkeypatch):
    # 300,000 rows of zeros compress to a few KB; the archive must be refused without np.load.
    buf = io.BytesIO()
    n = 300_000
    np.savez_compressed(buf, x=np.zeros((n, 2), dtype=np.float32), labels=np.zeros(n, dtype=np.int64),
                        subject_ids=np.array(["a"] * n), split=np.array("user"))
    assert len(buf.getvalue()) < 200_000

    def no_load(*a, **k):
        raise AssertionError("np.load called on an archive the headers already refuse")

    monkeypatch.setattr(np, "load", no_load)
    r = _post_raw(client, "/v1/models/hard/samples", buf.getvalue(), "application/x-npz")
    assert r.status_code == 422 and "At most 100000 samples" in r.json()["detail"], r.text
    _nothing_written(client, db)


def test_npz_header_declaring_more_than_its_data(client, db, model):
    # A hand-made member whose header claims a billion rows and holds no data.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 2)})
    good = io.BytesIO()
    np.savez(good, labels=np.zeros(2, dtype=np.int64), subject_ids=np.array(["a", "b"]), split=np.array("user"))
    out = io.BytesIO()
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        dst.writestr("x.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:])
    r = _post_raw(client, "/v1/models/hard/samples", out.getvalue(), "application/x-npz")
    assert r.status_code == 422 and "got 1000000000 in 'x'" in r.json()["detail"], r.text
    _nothing_written(client, db)


def test_npz_object_arrays_and_wrong_shapes_are_refused_from_headers(client, db, model):
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((2, 2)), labels=np.zeros(2, dtype=np.int64),
             subject_ids=np.array(["a", "b"], dtype=object), split=np.array("user"))
    r = _post_raw(client, "/v1/models/hard/samples", buf.getvalue(), "application/x-npz")
    assert r.status_code == 422 and "'subject_ids' holds Python objects" in r.json()["detail"], r.text
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((2, 3)), labels=np.zeros(2, dtype=np.int64), subject_ids=np.array(["a", "b"]), split=np.array("user"))
    r = _post_raw(client, "/v1/models/hard/samples", buf.getvalue(), "application/x-npz")
    assert r.status_code == 422 and "sample shape [3]" in r.json()["detail"] and r.json()["expected"] == [2]
    _nothing_written(client, db)


def test_npz_extra_arrays_are_ignored(client, db, model):
    buf = io.BytesIO()
    np.savez(buf, x=np.ones((2, 2)), labels=np.array([1, 2]), subject_ids=np.array(["a", "b"]),
             split=np.array("eval"), notes=np.array(["ignored"]))
    r = _post_raw(client, "/v1/models/hard/samples", buf.getvalue(), "application/x-npz")
    assert r.status_code == 201 and r.json()["by_split"] == {"eval": 2}, r.text


def test_empty_safetensors_upload_says_no_samples(client, db, model):
    body = st_save({"x": np.zeros((0, 2), dtype=np.float32), "labels": np.zeros(0, dtype=np.int64)},
                   metadata={"subject_ids": "[]", "split": "[]"})
    r = _post_raw(client, "/v1/models/hard/samples", body, "application/vnd.safetensors")
    assert r.status_code == 422 and "no samples" in r.json()["detail"], r.text
    _nothing_written(client, db)


def test_over_long_version_number_is_not_found(client, model):
    h = client.auth("operator")
    r = client.get("/v1/models/hard/versions/" + "9" * 25, headers=h)
    assert r.status_code == 404 and "has no version" in r.json()["detail"]
    # A number beyond what the database holds is refused at the door (issue 10), not looked up.
    r = client.post("/v1/models/hard/aliases/production", json={"version": 10**20}, headers=h)
    assert r.status_code == 422 and "body.version" in r.json()["detail"]
    r = client.post("/v1/models/hard/aliases/production", json={"version": 2**31 - 1}, headers=h)
    assert r.status_code == 404 and "has no version" in r.json()["detail"]


def test_abandoned_long_poll_stops_querying(client, db, model, monkeypatch):
    """A poller that hangs up mid-wait must not keep polling the database until its deadline."""
    import asyncio
    import time

    from service.model_registry import service as registry
    from service.model_registry.service import move_alias
    from service.models import ModelVersion

    store = client.app.state.store
    art = store.put_bytes(b"w" * 64, prefix=f"weights/{model.id}", suffix=".safetensors")
    v = ModelVersion(model_id=model.id, number=1, artifact_uri=art.uri, sha256=art.sha256, size_bytes=art.size,
                     metrics={}, bound={}, state="live")
    db.add(v)
    db.flush()
    move_alias(db, model, "latest", v, "pipeline", system=True)
    h = client.auth("serving")
    etag = client.get("/v1/models/hard/versions/latest", headers=h).headers["etag"]

    calls = []
    real = registry.current_etag

    def counting(*a, **k):
        calls.append(time.monotonic())
        return real(*a, **k)

    async def poll(hang_up_after: float | None) -> tuple[int, float]:
        t0 = time.monotonic()
        sent = []
        first = True

        async def receive():
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b"", "more_body": False}
            # Like uvicorn: a disconnect that already happened is returned without suspending.
            if hang_up_after is not None and time.monotonic() >= t0 + hang_up_after:
                return {"type": "http.disconnect"}
            await asyncio.sleep(3600)

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
                 "path": "/v1/models/hard/versions/latest", "raw_path": b"/v1/models/hard/versions/latest",
                 "query_string": b"wait=2", "root_path": "", "client": ("127.0.0.1", 1), "server": ("testserver", 80),
                 "headers": [(b"host", b"testserver"), (b"authorization", h["Authorization"].encode()),
                             (b"if-none-match", etag.encode())]}
        await client.app(scope, receive, send)
        return sent[0]["status"], time.monotonic() - t0

    monkeypatch.setattr(registry, "current_etag", counting)
    status, took = asyncio.run(poll(0.3))
    assert status == 304 and took < 1.0, took
    assert len(calls) <= 4, len(calls)
    # control: a poller that stays connected is polled until the deadline
    calls.clear()
    status, took = asyncio.run(poll(None))
    assert status == 304 and took >= 1.9 and len(calls) >= 8, (took, len(calls))


def test_racing_first_moves_of_an_alias_both_succeed(committed_app, engine):
    """Two movers that both find no 'production' row: the second waits on the first's insert,
    then moves the alias like any other move (no IntegrityError, both moves in the history)."""
    import threading
    import time

    from sqlalchemy.orm import Session

    from service.model_registry.service import move_alias
    from service.models import AliasEvent, ModelAlias, ModelVersion

    c = committed_app
    assert c.post("/v1/models", json=SPEC, headers=c.auth("admin")).status_code == 201
    store = c.app.state.store
    with Session(engine) as s, s.begin():
        m = s.execute(select(Model)).scalar_one()
        for n in (1, 2):
            art = store.put_bytes(f"w{n}".encode() * 32, prefix=f"weights/{m.id}", suffix=".safetensors")
            s.add(ModelVersion(model_id=m.id, number=n, artifact_uri=art.uri, sha256=art.sha256, size_bytes=art.size,
                               metrics={}, bound={}, state="live"))
    errors: list[BaseException] = []

    def second():
        try:
            with Session(engine) as s, s.begin():
                m = s.execute(select(Model)).scalar_one()
                v2 = s.execute(select(ModelVersion).where(ModelVersion.number == 2)).scalar_one()
                move_alias(s, m, "production", v2, "second")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    with Session(engine) as s, s.begin():
        m = s.execute(select(Model)).scalar_one()
        v1 = s.execute(select(ModelVersion).where(ModelVersion.number == 1)).scalar_one()
        assert move_alias(s, m, "production", v1, "first")
        th = threading.Thread(target=second)
        th.start()
        time.sleep(0.4)  # the second mover is now blocked on our uncommitted row
    th.join(10)
    assert not th.is_alive() and errors == [], errors
    with Session(engine) as s:
        alias = s.execute(select(ModelAlias).where(ModelAlias.name == "production")).scalar_one()
        number = s.execute(select(ModelVersion.number).where(ModelVersion.id == alias.version_id)).scalar_one()
        assert number == 2
        events = s.execute(select(AliasEvent.actor, AliasEvent.from_version_id).where(AliasEvent.alias == "production")
                           .order_by(AliasEvent.id)).all()
        assert [e.actor for e in events] == ["first", "second"] and events[0].from_version_id is None
        assert events[1].from_version_id is not None
