"""The pull client against the real API served by uvicorn on loopback, with versions published
by writing the database and the artifact store directly (as the publish step does)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
import uvicorn
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from service.core.storage import LocalArtifactStore as ArtifactStore
from service.main import create_app
from service.models import Model, ModelAlias, ModelVersion
from service.models._types import utcnow
from workers.client import ChecksumMismatch, LetheClient, ModelHolder, PullError, VersionGone, file_sha256
from workers.unlearning import MixedLinearModel, to_bytes

ARCH = {"in_features": 4, "hidden": [6], "num_classes": 3}


class Recorder(httpx.HTTPTransport):
    """Records (method, path, If-None-Match sent, status) of every request."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, str, str | None, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.log.append((request.method, request.url.path, request.headers.get("if-none-match"), response.status_code))
        return response


@pytest.fixture
def server(committed_app, settings, engine):
    """A real uvicorn on an ephemeral port, same database and artifact store as ``committed_app``."""
    app = create_app(settings)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    with Session(engine) as s, s.begin():
        s.add(Model(name="m", architecture="mlp", architecture_config=ARCH, input_shape=[4], num_classes=3, linearize="all", method_config={}))
    yield SimpleNamespace(base=f"http://127.0.0.1:{port}", token=committed_app.tokens["serving"], tokens=committed_app.tokens,
                          store=ArtifactStore(settings.storage.root), engine=engine)
    srv.should_exit = True
    thread.join(timeout=15)


def publish(server, seed: int) -> tuple[int, MixedLinearModel, str]:
    """Build a model with random user weights, store its file, insert the version, move ``latest``."""
    net = MixedLinearModel.build("mlp", ARCH, linearize="all", seed=seed)
    g = torch.Generator().manual_seed(seed)
    net.set_user_parameters({k: torch.randn(v.shape, generator=g, dtype=v.dtype) * 0.1 for k, v in net.user_parameters().items()})
    data = to_bytes(net)
    stored = server.store.put_bytes(data, prefix="weights", suffix=".safetensors")
    with Session(server.engine) as s, s.begin():
        m = s.execute(select(Model).where(Model.name == "m")).scalar_one()
        number = (s.execute(select(ModelVersion.number).where(ModelVersion.model_id == m.id).order_by(ModelVersion.number.desc())).scalar() or 0) + 1
        v = ModelVersion(model_id=m.id, number=number, artifact_uri=stored.uri, sha256=stored.sha256, size_bytes=stored.size,
                         metrics={}, bound={"kl_nats": 0.0}, state="live", created_at=utcnow())
        s.add(v)
        s.flush()
        alias = s.get(ModelAlias, (m.id, "latest"))
        if alias is None:
            s.add(ModelAlias(model_id=m.id, name="latest", version_id=v.id))
        else:
            alias.version_id = v.id
    return number, net, stored.sha256


def revoke(server, number: int) -> None:
    with Session(server.engine) as s, s.begin():
        v = s.execute(select(ModelVersion).join(Model).where(Model.name == "m", ModelVersion.number == number)).scalar_one()
        v.state, v.revoked_at = "revoked", utcnow()


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def test_pull_verifies_writes_atomically_and_loads_the_same_model(server, tmp_path):
    number, net, sha = publish(server, seed=1)
    with LetheClient(server.base, server.token) as client:
        pulled = client.pull("m", tmp_path / "models")
    assert pulled.number == number == 1 and pulled.sha256 == sha
    assert pulled.path == tmp_path / "models" / "m" / f"1-{sha[:12]}.safetensors"
    assert hashlib.sha256(pulled.path.read_bytes()).hexdigest() == sha
    assert files(tmp_path / "models") == sorted([pulled.path.name, pulled.path.with_suffix(".json").name])  # no temp left
    beside = pulled.path.with_suffix(".json").read_text()
    assert f'"sha256": "{sha}"' in beside and '"number": 1' in beside
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.allclose(pulled.module(x.to(net.dtype_)), net(x.to(net.dtype_)), atol=1e-6)
        assert not torch.allclose(pulled.module(x.to(net.dtype_)), torch.zeros(16, 3, dtype=net.dtype_))


def test_a_second_pull_of_the_same_version_is_a_304(server, tmp_path):
    tmp_path = tmp_path / "models"  # the artifact store lives in tmp_path/artifacts
    publish(server, seed=2)
    rec = Recorder()
    with LetheClient(server.base, server.token, transport=rec) as client:
        first = client.pull("m", tmp_path, load=False)
        inode = first.path.stat().st_ino
        second = client.pull("m", tmp_path, load=False)
        weights = [e for e in rec.log if e[1].endswith("/weights")]
        assert [(w[2], w[3]) for w in weights] == [(None, 200), (f'"{first.sha256}"', 304)]
        assert second.path == first.path and second.path.stat().st_ino == inode  # not rewritten

        # a corrupted local copy is not trusted: no If-None-Match, a fresh verified download
        first.path.write_bytes(b"garbage")
        third = client.pull("m", tmp_path, load=False)
        assert rec.log[-1][1].endswith("/weights") and rec.log[-1][2:] == (None, 200)
        assert file_sha256(third.path) == first.sha256


def test_a_tampered_download_raises_and_leaves_no_file(server, tmp_path):
    tmp_path = tmp_path / "models"
    number, _, sha = publish(server, seed=3)
    with Session(server.engine) as s:
        uri = s.execute(select(ModelVersion.artifact_uri).where(ModelVersion.sha256 == sha)).scalar_one()
    stored = server.store.path(uri)
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit on the server's disk
    stored.write_bytes(bytes(data))
    with LetheClient(server.base, server.token) as client, pytest.raises(ChecksumMismatch, match="sha256"):
        client.pull("m", tmp_path, load=False)
    assert files(tmp_path) == []


def test_a_revoked_version_is_a_clear_error(server, tmp_path):
    tmp_path = tmp_path / "models"
    publish(server, seed=4)
    publish(server, seed=5)
    revoke(server, 1)
    with LetheClient(server.base, server.token) as client:
        with pytest.raises(VersionGone, match="revoked") as err:
            client.pull("m", tmp_path, ref="1", load=False)
        assert err.value.status == 410 and err.value.problem["status"] == 410
        assert files(tmp_path) == []
        assert client.pull("m", tmp_path, load=False).number == 2  # latest is clean and served
        with pytest.raises(PullError) as err:
            client.pull("nope", tmp_path, load=False)
        assert err.value.status == 404 and not isinstance(err.value, VersionGone)
    with LetheClient(server.base, "not-a-token") as bad, pytest.raises(PullError) as err:
        bad.manifest("m")
    assert err.value.status == 401


def test_watch_swaps_in_each_new_version(server, tmp_path):
    tmp_path = tmp_path / "models"
    n1, net1, _ = publish(server, seed=6)
    holder = ModelHolder()
    stop = threading.Event()
    client = LetheClient(server.base, server.token, timeout=10)
    watcher = threading.Thread(target=client.watch, args=("m", tmp_path, holder.swap), kwargs={"wait": 1, "stop_event": stop}, daemon=True)
    watcher.start()
    try:
        first = holder.wait_for(lambda p: p.number == n1, timeout=30)
        assert first is not None, client.last_error
        n2, net2, sha2 = publish(server, seed=7)
        second = holder.wait_for(lambda p: p.number == n2, timeout=30)
        assert second is not None and second.sha256 == sha2 and second.path.exists(), client.last_error
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(3), dtype=net2.dtype_)
        with torch.no_grad():
            assert torch.allclose(holder.module(x), net2(x), atol=1e-6)
            assert not torch.allclose(holder.module(x), net1(x), atol=1e-6)
    finally:
        stop.set()
        watcher.join(timeout=15)
        client.close()
    assert not watcher.is_alive()
    with pytest.raises(ValueError, match="alias"):
        client.watch("m", tmp_path, holder.swap, ref="1")


def test_lethe_pull_command(server, tmp_path):
    tmp_path = tmp_path / "models"
    from service.cli import app as cli

    _, _, sha = publish(server, seed=8)
    runner = CliRunner()
    r = runner.invoke(cli, ["pull", "m", "--to", str(tmp_path), "--url", server.base, "--token", server.token])
    assert r.exit_code == 0, r.output
    path = tmp_path / "m" / f"1-{sha[:12]}.safetensors"
    assert "v1" in r.output and sha in r.output and str(path) in r.output and path.exists()
    r = runner.invoke(cli, ["pull", "m", "--to", str(tmp_path), "--url", server.base, "--token", server.token, "--ref", "7"])
    assert r.exit_code == 1 and "404" in r.output and "Traceback" not in r.output


def _publish_bytes(server, data: bytes) -> int:
    stored = server.store.put_bytes(data, prefix="weights", suffix=".safetensors")
    with Session(server.engine) as s, s.begin():
        m = s.execute(select(Model).where(Model.name == "m")).scalar_one()
        v = ModelVersion(model_id=m.id, number=1, artifact_uri=stored.uri, sha256=stored.sha256, size_bytes=stored.size,
                         metrics={}, bound={"kl_nats": 0.0}, state="live", created_at=utcnow())
        s.add(v)
        s.flush()
        s.add(ModelAlias(model_id=m.id, name="latest", version_id=v.id))
    return 1


def test_a_version_naming_an_unregistered_architecture_is_refused_and_nothing_imported(server, tmp_path, monkeypatch):
    """Weights whose metadata names ``module:function`` (here a module that would write a file on
    import): the client refuses to build them, imports nothing, and watch() does not retry."""
    marker = tmp_path / "imported.txt"
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "lethe_evil_net.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    monkeypatch.syspath_prepend(str(mods))

    def builder(**cfg):
        return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))

    net = MixedLinearModel.build("lethe_evil_net:build", ARCH, linearize="all", architectures={"lethe_evil_net:build": builder})
    _publish_bytes(server, to_bytes(net))
    import sys

    from workers.client import ModelNotLoadable

    with LetheClient(server.base, server.token) as client:
        with pytest.raises(ModelNotLoadable, match="'lethe_evil_net:build' is not registered here; known architectures: cnn, linear, mlp, two_layer_relu"):
            client.pull("m", tmp_path / "models")
        with pytest.raises(ModelNotLoadable):
            client.watch("m", tmp_path / "models", lambda p: None, wait=1)  # raised, not retried forever
        assert client.pull("m", tmp_path / "models", load=False).module is None  # downloading is still fine
    assert not marker.exists() and "lethe_evil_net" not in sys.modules
    with LetheClient(server.base, server.token, architectures={"lethe_evil_net:build": builder}) as client:
        pulled = client.pull("m", tmp_path / "models")
    x = torch.randn(3, 4, dtype=net.dtype_)
    with torch.no_grad():
        assert torch.allclose(pulled.module(x), net(x))
