"""The library builds registered architectures only; a weights file naming anything else is
refused with a clear error and nothing is imported (DESIGN §10, issue 8)."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from workers.unlearning import ConfigError, MixedLinearModel, build_network, load_model, save_weights
from workers.unlearning.linearized import resolve_device
from workers.unlearning.networks import (
    declare_architecture,
    forget_registrations,
    known_architectures,
    register_architecture,
    resolve_architecture,
)
from workers.unlearning.serialization import read_metadata


def tiny(in_features: int = 4, num_classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, 5), nn.Tanh(), nn.Linear(5, num_classes))


@pytest.fixture(autouse=True)
def _clean_registry():
    forget_registrations()
    yield
    forget_registrations()


@pytest.fixture
def sentinel(tmp_path, monkeypatch):
    """A module on sys.path that writes a file when imported (or its builder called)."""
    marker = tmp_path / "imported.txt"
    (tmp_path / "lethe_sentinel_lib.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "from torch import nn\n"
        f"def build(**config):\n    open({str(marker)!r}, 'w').write('called')\n    return nn.Linear(4, 3)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("lethe_sentinel_lib", None)


@pytest.mark.parametrize("name,config", [
    ("os:system", {"command": "touch pwned.txt"}),
    ("subprocess:Popen", {"args": ["touch", "pwned.txt"]}),
    ("builtins:eval", {"source": "1"}),
    ("importlib:import_module", {"name": "antigravity"}),
    ("missing_module_q7:build", {}),
    ("lethe_sentinel_lib:build", {}),
])
def test_build_network_refuses_names_outside_the_registry(tmp_path, monkeypatch, sentinel, name, config):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="not registered here; known architectures: cnn, linear, mlp, two_layer_relu"):
        build_network(name, config)
    assert not (tmp_path / "pwned.txt").exists() and not sentinel.exists()
    assert "lethe_sentinel_lib" not in sys.modules and "missing_module_q7" not in sys.modules


def test_registered_declared_and_explicit_builders(sentinel):
    register_architecture("tiny", tiny)
    assert isinstance(build_network("tiny", {"num_classes": 2}), nn.Sequential)
    # a declaration (from the server's settings) is imported when first built, not before
    declare_architecture("legacy_pkg:build", "lethe_sentinel_lib:build")
    assert "legacy_pkg:build" in known_architectures() and not sentinel.exists()
    assert isinstance(build_network("legacy_pkg:build"), nn.Linear) and sentinel.read_text() == "called"
    assert build_network("explicit", {}, architectures={"explicit": lambda: nn.Linear(2, 2)}).in_features == 2
    with pytest.raises(ConfigError, match="built-in"):
        register_architecture("mlp", tiny)
    with pytest.raises(ConfigError, match="package.module:function"):
        declare_architecture("bad", "os.system")
    with pytest.raises(ConfigError, match="does not accept this config"):
        build_network("tiny", {"command": "id"})
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        build_network("explicit", architectures={"explicit": lambda: "hello"})


def test_entry_points_of_the_group_are_registry_keys(tmp_path, monkeypatch):
    """A distribution installed on sys.path (a dist-info directory) with ``lethe.architectures``."""
    dist = tmp_path / "lethe_lib_nets-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lethe-lib-nets\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lethe.architectures]\nlib_tiny = lethe_lib_nets:tiny\n")
    (tmp_path / "lethe_lib_nets.py").write_text("from torch import nn\ndef tiny(n=3):\n    return nn.Linear(4, n)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "lib_tiny" in known_architectures()
        assert "lethe_lib_nets" not in sys.modules  # listed, not loaded
        assert build_network("lib_tiny", {"n": 2}).out_features == 2
    finally:
        sys.modules.pop("lethe_lib_nets", None)


def _weights_naming(tmp_path, name: str) -> tuple:
    mm = MixedLinearModel.build(name, {"in_features": 4, "num_classes": 3}, linearize="all", architectures={name: tiny})
    mm.set_user_parameters({k: torch.full_like(v, 0.01) for k, v in mm.user_parameters().items()})
    path = tmp_path / "w.safetensors"
    save_weights(path, mm)
    return path, mm


@pytest.mark.parametrize("name", ["os:system", "lethe_sentinel_lib:build", "custom_unregistered"])
def test_load_model_refuses_a_file_naming_an_unregistered_architecture(tmp_path, sentinel, name):
    path, mm = _weights_naming(tmp_path, name)
    assert read_metadata(path.read_bytes())["architecture"] == name
    with pytest.raises(ConfigError, match=f"refusing to load this weights file: architecture '{name}' is not registered here"):
        load_model(path)
    assert not sentinel.exists() and "lethe_sentinel_lib" not in sys.modules
    # the caller may pass the builder explicitly
    loaded = load_model(path, architectures={name: tiny})
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(loaded(x), mm(x))


def test_resolve_architecture_lists_known_keys():
    register_architecture("zeta", tiny)
    with pytest.raises(ConfigError) as exc:
        resolve_architecture("x" * 500)
    assert "cnn, linear, mlp, two_layer_relu, zeta" in str(exc.value) and "x" * 100 not in str(exc.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="no CUDA device"):
        MixedLinearModel.build("mlp", {"in_features": 4, "num_classes": 3}, device="cuda")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("quantum")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.parametrize("architecture,config", [("linear", {"in_features": 7}), ("two_layer_relu", {"in_features": 7, "hidden": 6})])
def test_homogeneous_networks_are_bias_free_scalar_and_one_homogeneous(architecture, config):
    from service.model_registry.architectures import BUILTINS as MEASURED
    from service.core.config import LimitsSettings

    net = build_network(architecture, config).double()
    trainable = [p for p in net.parameters() if p.requires_grad]
    _, measure = MEASURED[architecture](config, [7], 2, LimitsSettings())
    assert sum(p.numel() for p in trainable) == measure.parameters  # the torch-free count agrees
    assert not any(isinstance(m, nn.Linear) and m.bias is not None for m in net.modules())
    x = torch.randn(5, 7, dtype=torch.float64)
    out = net(x)
    assert out.shape == (5, 1)
    with torch.no_grad():  # N(x; c·θ) = c·N(x; θ) for c > 0: the trained weights alone scale the output
        for p in trainable:
            p.mul_(3.0)
    assert torch.allclose(net(x), 3.0 * out)
    with pytest.raises(ConfigError, match="num_classes must be 2"):
        build_network(architecture, {**config, "num_classes": 3})
