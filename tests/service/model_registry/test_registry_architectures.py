"""Architectures come from the registry only, and registration refuses what exceeds the limits
(DESIGN §10, issue 8). Every refusal: a 422 problem that says what is wrong, nothing written,
no file created, no job, and the name was never imported."""

from __future__ import annotations

import sys
import textwrap

import pytest
from registry_support import nothing_written, refused

SPEC = {"name": "arch", "architecture": "mlp", "input_shape": [4], "num_classes": 3}


def _register(client, **over):
    return client.post("/v1/models", json={**SPEC, **over}, headers=client.auth("admin"))


@pytest.fixture
def sentinel(tmp_path, monkeypatch):
    """A module that, if ever imported, writes a file: proof that a name was not imported."""
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    marker = tmp_path / "imported.txt"
    (mod_dir / "lethe_sentinel_net.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n\ndef build(**config):\n    open({str(marker)!r}, 'w').write('called')\n"
    )
    monkeypatch.syspath_prepend(str(mod_dir))
    monkeypatch.setenv("PYTHONPATH", str(mod_dir))
    yield marker
    sys.modules.pop("lethe_sentinel_net", None)


@pytest.mark.parametrize("architecture,config", [
    ("os:system", {"command": "id > pwned.txt"}),
    ("subprocess:Popen", {"args": ["touch", "pwned.txt"]}),
    ("builtins:eval", {"source": "open('pwned.txt', 'w')"}),
    ("importlib:import_module", {"name": "antigravity"}),
    ("no_such_module_x9:build", {}),
    ("lethe_sentinel_net:build", {}),
    ("os.path:join", {}),
    ("torch.nn:Linear", {"in_features": 4, "out_features": 3}),
])
def test_import_paths_are_refused_and_never_imported(client, db, tmp_path, monkeypatch, sentinel, architecture, config):
    monkeypatch.chdir(tmp_path)
    r = _register(client, architecture=architecture, architecture_config=config)
    body = refused(r, "architecture-unknown", "not registered", "cnn, linear, mlp, two_layer_relu")
    assert body["known"] == ["cnn", "linear", "mlp", "two_layer_relu"]
    assert any(e["field"] == "architecture" for e in body["errors"])
    assert not (tmp_path / "pwned.txt").exists() and not sentinel.exists()
    assert "lethe_sentinel_net" not in sys.modules and "no_such_module_x9" not in sys.modules
    nothing_written(db, client)


def _limits(client, **kw):
    for k, v in kw.items():
        setattr(client.app.state.settings.limits, k, v)


@pytest.mark.parametrize("over,kind,words", [
    ({"architecture_config": {"hidden": [1_000_000_000]}}, "limit-exceeded", ["parameters", "20000000", "LETHE_LIMITS__MAX_PARAMETERS"]),
    ({"architecture_config": {"hidden": [-5]}}, "architecture-invalid", ["hidden[0]", "at least 1"]),
    ({"architecture_config": {"hidden": [8, 0]}}, "architecture-invalid", ["hidden[1]"]),
    ({"architecture_config": {"hidden": [8] * 10_000}}, "limit-exceeded", ["10001 layers", "64"]),
    ({"architecture_config": {"in_features": 5}}, "architecture-invalid", ["in_features is 5", "input_shape [4]", "4"]),
    ({"architecture_config": {"num_classes": 7}}, "architecture-invalid", ["num_classes is 7", "3"]),
    ({"architecture_config": {"command": "id"}}, "architecture-invalid", ["command"]),
    ({"architecture_config": {"hidden": ["8"]}}, "architecture-invalid", ["hidden"]),
    ({"architecture_config": {"activation": "os.system"}}, "architecture-invalid", ["activation"]),
    ({"input_shape": [100_000, 100_000], "architecture_config": {}}, "limit-exceeded",
     ["10000000000 elements", "1000000", "LETHE_LIMITS__MAX_INPUT_ELEMENTS"]),
    ({"linearize": "last:99999"}, "limit-exceeded", ["last:99999", "2 layers"]),
    ({"linearize": "last:3", "architecture_config": {"hidden": [8]}}, "limit-exceeded", ["2 layers"]),
    ({"method_config": {"max_iter": 1e12}}, "limit-exceeded", ["max_iter", "100000", "LETHE_LIMITS__MAX_ITERATIONS"]),
    ({"method_config": {"core_epochs": 1_000_000_000}}, "limit-exceeded", ["core_epochs", "1000", "LETHE_LIMITS__MAX_EPOCHS"]),
    ({"method_config": {"max_newton_steps": 10_000}}, "limit-exceeded", ["max_newton_steps", "50"]),
    ({"method_config": {"chunk_size": 10**9}}, "limit-exceeded", ["chunk_size", "1000000"]),
    ({"architecture": "cnn", "input_shape": [4]}, "architecture-invalid", ["[channels, height, width]"]),
    ({"architecture": "cnn", "input_shape": [1, 8, 8], "architecture_config": {"channels": [-1]}}, "architecture-invalid", ["channels[0]"]),
    ({"architecture": "cnn", "input_shape": [1, 8, 8], "architecture_config": {"height": 9}}, "architecture-invalid", ["height is 9"]),
    ({"architecture": "cnn", "input_shape": [1, 8, 8], "architecture_config": {"channels": [4096, 4096]}}, "limit-exceeded", ["parameters"]),
])
def test_absurd_configs_are_refused_with_the_limit(client, db, over, kind, words):
    r = _register(client, **over)
    refused(r, kind, *words)
    nothing_written(db, client)


def test_limits_come_from_settings(client, db):
    # 4*8+8 + 8*3+3 = 67 parameters, 2 layers
    _limits(client, max_parameters=66)
    refused(_register(client, architecture_config={"hidden": [8]}), "limit-exceeded", "67 parameters", "66")
    _limits(client, max_parameters=67, max_layers=1)
    refused(_register(client, architecture_config={"hidden": [8]}), "limit-exceeded", "2 layers", "limit is 1")
    _limits(client, max_layers=2, max_input_elements=3)
    refused(_register(client, architecture_config={"hidden": [8]}), "limit-exceeded", "4 elements", "3")
    nothing_written(db, client)
    _limits(client, max_input_elements=4)
    r = _register(client, architecture_config={"hidden": [8]}, linearize="last:2")
    assert r.status_code == 201, r.text
    assert r.json()["architecture_config"] == {"in_features": 4, "num_classes": 3, "hidden": [8], "activation": "relu"}


def test_cnn_is_measured_arithmetically_and_completed(client, db):
    _limits(client, max_parameters=1_000_000)
    r = _register(client, architecture="cnn", input_shape=[1, 8, 8], architecture_config={"channels": [4, 8], "hidden": 16},
                  linearize="last:4")
    assert r.status_code == 201, r.text
    assert r.json()["architecture_config"] == {"in_channels": 1, "height": 8, "width": 8, "num_classes": 3, "channels": [4, 8], "hidden": 16}
    # 4 layers with parameters (2 conv + 2 linear): last:5 is beyond the network
    refused(_register(client, name="arch2", architecture="cnn", input_shape=[1, 8, 8],
                       architecture_config={"channels": [4, 8], "hidden": 16}, linearize="last:5"), "limit-exceeded", "4 layers")
    # parameters: conv 1*4*9+4=40, conv 4*8*9+8=296, linear 8*4*16+16=528, linear 16*3+3=51 -> 915
    _limits(client, max_parameters=914)
    refused(_register(client, name="arch3", architecture="cnn", input_shape=[1, 8, 8],
                       architecture_config={"channels": [4, 8], "hidden": 16}), "limit-exceeded", "915 parameters")


@pytest.mark.parametrize("architecture,config,params", [
    ("linear", {}, 4),  # w ∈ R^4, no bias
    ("two_layer_relu", {"hidden": 6}, 24),  # W ∈ R^{6×4}; the output layer is a fixed buffer
])
def test_homogeneous_scalar_networks_are_measured_and_binary_only(client, db, architecture, config, params):
    refused(_register(client, architecture=architecture, architecture_config=config), "architecture-invalid",
             "num_classes must be 2", "3")
    refused(_register(client, architecture=architecture, architecture_config={**config, "bias": True}),
             "architecture-invalid", "bias")
    _limits(client, max_parameters=params - 1)
    refused(_register(client, architecture=architecture, architecture_config=config, num_classes=2),
             "limit-exceeded", f"{params} parameters")
    nothing_written(db, client)
    _limits(client, max_parameters=params)
    refused(_register(client, architecture=architecture, architecture_config=config, num_classes=2, linearize="last:2"),
             "limit-exceeded", "1 layers")
    r = _register(client, architecture=architecture, architecture_config=config, num_classes=2)
    assert r.status_code == 201, r.text
    assert r.json()["architecture_config"] == {"in_features": 4, "num_classes": 2, **config}


# ----------------------------------------------------------------------------- declared entries
NETS = textwrap.dedent('''
    import time
    import torch
    from torch import nn

    def tiny(in_features, num_classes, width=8):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, num_classes))

    def huge(width):
        # a billion parameters: measured on the meta device, never allocated
        return nn.Sequential(nn.Flatten(), nn.Linear(4, width), nn.Linear(width, 3))

    def hog(**config):
        blob = bytearray(64 << 30)  # real memory, not a tensor: the probe's cap stops it
        return nn.Linear(4, 3)

    def sleepy(**config):
        time.sleep(60)
        return nn.Linear(4, 3)

    def wrong_output(**config):
        return nn.Linear(4, 5)

    def not_a_module(**config):
        return "hello"
''')


@pytest.fixture
def declared(client, tmp_path, monkeypatch):
    """Networks an administrator declares in settings (a module on the probe's PYTHONPATH)."""
    mod_dir = tmp_path / "nets"
    mod_dir.mkdir()
    (mod_dir / "lethe_admin_nets.py").write_text(NETS)
    monkeypatch.setenv("PYTHONPATH", f"{mod_dir}")
    arch = client.app.state.settings.architectures
    arch.declared = {name: f"lethe_admin_nets:{name}" for name in ("tiny", "huge", "hog", "sleepy", "wrong_output", "not_a_module")}
    arch.declared["legacy_pkg.nets:tiny"] = "lethe_admin_nets:tiny"
    arch.probe_memory_mb = 2048
    arch.probe_timeout_s = 60
    yield arch
    assert "lethe_admin_nets" not in sys.modules  # the API process never imported it


def test_declared_entry_is_measured_in_a_probe_and_accepted(client, db, declared):
    r = _register(client, architecture="tiny", architecture_config={"in_features": 4, "num_classes": 3}, linearize="last:2")
    assert r.status_code == 201, r.text
    assert r.json()["architecture"] == "tiny" and r.json()["architecture_config"] == {"in_features": 4, "num_classes": 3}
    # the probe measured 4*8+8 + 8*3+3 = 67 parameters and 2 layers
    _limits(client, max_parameters=66)
    refused(_register(client, name="tiny2", architecture="tiny", architecture_config={"in_features": 4, "num_classes": 3}),
             "limit-exceeded", "67 parameters")
    _limits(client, max_parameters=10_000)
    refused(_register(client, name="tiny3", architecture="tiny", architecture_config={"in_features": 4, "num_classes": 3},
                       linearize="last:3"), "limit-exceeded", "2 layers")
    # a row naming an import path keeps working when that key is declared (legacy models)
    r = _register(client, name="legacy", architecture="legacy_pkg.nets:tiny", architecture_config={"in_features": 4, "num_classes": 3})
    assert r.status_code == 201, r.text


def test_declared_entries_that_misbehave_arerefused(client, db, declared):
    refused(_register(client, architecture="huge", architecture_config={"width": 500_000_000}), "limit-exceeded", "parameters")
    refused(_register(client, architecture="hog"), "architecture-invalid", "hog", "2048 MiB")
    refused(_register(client, architecture="wrong_output"), "architecture-invalid", "[1, 5]", "[1, 3]")
    refused(_register(client, architecture="not_a_module"), "architecture-invalid", "not a torch.nn.Module")
    refused(_register(client, architecture="tiny", architecture_config={"in_features": 4}), "architecture-invalid", "num_classes")
    refused(_register(client, architecture="tiny", architecture_config={"in_features": 5, "num_classes": 3}),
             "architecture-invalid", "cannot take inputs of shape [4]")
    declared.probe_timeout_s = 3
    refused(_register(client, architecture="sleepy"), "limit-exceeded", "longer than 3 s", "PROBE_TIMEOUT_S")
    nothing_written(db, client)


def test_entry_point_architectures_are_registry_keys(client, db, tmp_path, monkeypatch):
    """An installed distribution (a dist-info directory on sys.path, and on the probe's PYTHONPATH)
    declaring ``lethe.architectures`` entry points."""
    site = tmp_path / "site"
    dist = site / "lethe_ep_nets-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lethe-ep-nets\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lethe.architectures]\nep_tiny = lethe_ep_nets:tiny\n")
    (site / "lethe_ep_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    r = _register(client, architecture="ep_tiny", architecture_config={"in_features": 4, "num_classes": 3})
    assert r.status_code == 201, r.text
    assert "lethe_ep_nets" not in sys.modules
    # unknown keys list the entry point too
    body = refused(_register(client, name="other", architecture="nope"), "architecture-unknown", "ep_tiny")
    assert body["known"] == ["cnn", "ep_tiny", "linear", "mlp", "two_layer_relu"]
    # an administrator can switch entry points off
    client.app.state.settings.architectures.entry_points = False
    refused(_register(client, name="other2", architecture="ep_tiny", architecture_config={"in_features": 4, "num_classes": 3}),
             "architecture-unknown", "cnn, linear, mlp, two_layer_relu")
