"""Contract over every registered method (one registry, one interface)."""

from __future__ import annotations

import json

import pytest
import torch
from unlearning_oracle import tiny_problem

from workers.unlearning import MixedLinearModel, TensorSource, get_method, list_methods, load_model, save_weights

GUARANTEES = {"exact", "certified", "heuristic"}


@pytest.mark.parametrize("name", [n for n in list_methods() if "mixed_linear" in get_method(n).families])
def test_method_contract(name, tmp_path):
    """The mixed-linear family's library contract (every method's runner contract:
    ``test_unlearning_registry.test_runner_interface_round_trip``)."""
    method = get_method(name)
    assert method.name == name
    assert method.guarantee in GUARANTEES
    cfg = method.config_cls(core_epochs=2, device="cpu", chunk_size=8)
    # config round-trips through JSON, and unknown keys are refused
    again = method.config_cls.model_validate(json.loads(cfg.model_dump_json()))
    assert again == cfg
    with pytest.raises(Exception):
        method.config_cls.model_validate({**cfg.model_dump(), "no_such_setting": 1})

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)

    def run():
        m = MixedLinearModel.build("mlp", {"in_features": 5, "hidden": [6], "num_classes": 3}, "last:1", device="cpu", seed=0)
        events = []
        method.train_core(m, TensorSource(x[:10], y[:10]), cfg, progress=events.append)
        r1 = method.fit(m, TensorSource(x[10:], y[10:], chunk_size=8), cfg, progress=events.append)
        r2 = method.forget(m, TensorSource(x[15:], y[15:], chunk_size=8), cfg, progress=events.append)
        return m, r1, r2, events

    m1, fit1, forget1, events = run()
    m2, _, _, _ = run()
    # deterministic apart from release noise
    for k in m1.user:
        assert torch.equal(m1.user[k], m2.user[k])
    assert fit1.iterations > 0 and forget1.residual_norm <= cfg.tol
    assert any(e.get("phase") == "solve" and "residual" in e for e in events)
    b = method.bound(forget1, cfg)
    assert b.kl_nats >= 0 and b.guarantee == method.guarantee

    sha = save_weights(tmp_path / "w.safetensors", m1, user_override=method.release(m1, cfg))
    import hashlib

    assert sha == hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest()
    loaded = load_model(tmp_path / "w.safetensors")
    noisy_out = loaded(x)
    assert noisy_out.shape == (40, 3)
    # the file holds the noised weights, not the private ones
    assert not torch.equal(noisy_out, m1(x))

    exact = tmp_path / "exact.safetensors"
    save_weights(exact, m1)
    assert torch.equal(load_model(exact)(x), m1(x))

