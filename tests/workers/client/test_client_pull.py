"""The pull client against a real uvicorn server: sha256 verification, atomic writes, 304, 410, watch."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch
import uvicorn
from sqlalchemy import text
from sqlalchemy.orm import Session

from service.core.security import create_token
from service.main import create_app
from service.model_registry.service import move_alias
from service.models import Base, Model, ModelVersion, Role
from workers.client import LetheClient, ModelHolder, PullError, VersionGone
from workers.unlearning import MixedLinearModel, to_bytes


def _truncate(engine):
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture
def server(engine, settings):
    _truncate(engine)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(settings)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.05)
    with Session(engine) as s, s.begin():
        _, token = create_token(s, Role.serving, "client-test")
        s.add(Model(name="m", architecture="mlp", architecture_config={"in_features": 3, "hidden": [4], "num_classes": 2},
                    input_shape=[3], num_classes=2, linearize="last:1", method_config={}))
    yield f"http://127.0.0.1:{port}", token, app
    srv.should_exit = True
    th.join(timeout=10)
    _truncate(engine)


def _publish(engine, store, number, seed):
    mm = MixedLinearModel.build("mlp", {"in_features": 3, "hidden": [4], "num_classes": 2}, "last:1", seed=seed)
    mm.set_user_parameters({k: torch.full_like(v, 0.01 * number) for k, v in mm.user_parameters().items()})
    art = store.put_bytes(to_bytes(mm), prefix="weights/1", suffix=".safetensors")
    with Session(engine) as s, s.begin():
        model = s.query(Model).one()
        v = ModelVersion(model_id=model.id, number=number, artifact_uri=art.uri, sha256=art.sha256, size_bytes=art.size, metrics={}, bound={})
        s.add(v)
        s.flush()
        move_alias(s, model, "latest", v, "test", system=True)
    return mm, art


def test_pull_verifies_loads_and_skips_unchanged(server, engine, tmp_path):
    base, token, app = server
    store = app.state.store
    mm, art = _publish(engine, store, 1, seed=0)
    client = LetheClient(base, token)
    pulled = client.pull("m", tmp_path)
    x = torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(pulled.module(x), mm(x))
    assert pulled.manifest["sha256"] == art.sha256 and pulled.path.name.startswith("1-")
    mtime = pulled.path.stat().st_mtime_ns
    again = client.pull("m", tmp_path)
    assert again.path == pulled.path and again.path.stat().st_mtime_ns == mtime  # not re-downloaded


def test_tampered_download_is_refused_and_leaves_no_file(server, engine, tmp_path):
    base, token, app = server
    store = app.state.store
    _, art = _publish(engine, store, 1, seed=0)
    path = store.path(art.uri)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PullError, match="sha256 mismatch"):
        LetheClient(base, token).pull("m", tmp_path)
    assert list((tmp_path / "m").glob("*")) == []


def test_revoked_is_a_clear_error(server, engine, tmp_path):
    base, token, app = server
    _publish(engine, app.state.store, 1, seed=0)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE model_versions SET state = 'revoked'")
    with pytest.raises(VersionGone, match="revoked"):
        LetheClient(base, token).pull("m", tmp_path, ref="1")


def test_watch_swaps_in_new_versions(server, engine, tmp_path):
    base, token, app = server
    _publish(engine, app.state.store, 1, seed=0)
    holder = ModelHolder()
    stop = threading.Event()
    client = LetheClient(base, token, timeout=10)
    th = threading.Thread(target=client.watch, args=("m", tmp_path, holder.swap), kwargs={"wait": 2, "stop_event": stop}, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while (holder.current is None) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holder.current.manifest["number"] == 1
    mm2, _ = _publish(engine, app.state.store, 2, seed=1)
    while holder.current.manifest["number"] != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    th.join(timeout=10)
    x = torch.randn(4, 3, dtype=torch.float64)
    assert holder.current.manifest["number"] == 2 and torch.equal(holder.module(x), mm2(x))
