"""Contract over every registered method (one registry, one interface)."""

from __future__ import annotations

import json

import pytest
import torch
from unlearning_oracle import tiny_problem

from workers.unlearning import MixedLinearModel, TensorSource, get_method, list_methods, load_model, save_weights
from workers.unlearning.methods.base import ModelSpec

GUARANTEES = {"exact", "certified", "heuristic"}


def _of_family(family: str) -> list[str]:
    return [n for n in list_methods() if family in get_method(n).families]


@pytest.mark.parametrize("name", _of_family("mixed_linear"))
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


def _same_files(a: dict[str, bytes], b: dict[str, bytes]) -> bool:
    """Same names, tensors and metadata (safetensors does not fix the order of metadata keys)."""
    from safetensors.torch import load

    from workers.unlearning.serialization import read_metadata

    def same(x: bytes, y: bytes) -> bool:
        tx, ty = load(x), load(y)
        return read_metadata(x) == read_metadata(y) and tx.keys() == ty.keys() and all(torch.equal(tx[k], ty[k]) for k in tx)

    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


# the samples contract; a class-only method (svd_projection) forgets whole classes: its contract is
# the registry's round trip and its own tests
@pytest.mark.parametrize("name", [n for n in _of_family("standard") if "samples" in get_method(n).kinds])
def test_standard_method_contract(name):
    """The runner's interface on a ``standard``-family method: build from a spec, train, forget,
    bound, gate, evaluate, release, serve, keep and reload its private state."""
    method = get_method(name)
    assert method.name == name and method.guarantee in GUARANTEES
    cfg = method.config_cls(chunk_size=8)
    assert method.config_cls.model_validate(json.loads(cfg.model_dump_json())) == cfg
    with pytest.raises(Exception):
        method.config_cls.model_validate({**cfg.model_dump(), "no_such_setting": 1})
    arch = getattr(method.config_cls, "architectures", ("mlp",))[0]
    spec = ModelSpec(arch, {"in_features": 5, "num_classes": 2})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g)
    y = (x[:, 0] > 0).long()
    ids = torch.arange(40)

    def run():
        m = method.build(spec, cfg)
        method.prepare(m, TensorSource(x[:0], y[:0]), cfg)
        method.train(m, TensorSource(x, y, chunk_size=8, ids=ids), cfg)
        gone = method.forget(m, TensorSource(x[5:], y[5:], chunk_size=8, ids=ids[5:]), cfg,
                             removed=TensorSource(x[:5], y[:5], ids=ids[:5]))
        return m, gone

    m1, gone = run()
    m2, _ = run()
    b1, b2 = method.save_private(m1), method.save_private(m2)
    assert _same_files(b1, b2)  # deterministic apart from release noise
    assert method.bound(gone, cfg).guarantee == method.guarantee
    ev = method.evaluate(m1, TensorSource(x, y), cfg)
    assert set(ev) >= {"accuracy", "loss", "n"} and ev["n"] == 40
    assert 0.0 <= method.membership_auc(m1, TensorSource(x[:5], y[:5]), TensorSource(x[5:], y[5:]), cfg) <= 1.0
    assert method.gate(method.bound(gone, cfg), {"accuracy": 1.0}, {"accuracy": 0.0}, cfg).ok is False
    again = method.load_private(b1, cfg)
    assert _same_files(method.save_private(again), b1)
    served = method.serve_bytes(m1, method.release(m1, cfg), {"model": "m"})
    assert served and all(name not in served for name in (b"duals", b"private"))
    if method.supports("retrain"):
        assert method.bound(method.retrain(m1, TensorSource(x[5:], y[5:], ids=ids[5:]), cfg), cfg).guarantee == "exact"


def test_a_lazy_source_reads_inputs_only_when_used_and_a_subset_only_its_rows():
    import numpy as np
    import torch

    from workers.unlearning.data import LazySource

    x = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    reads: list[list[int]] = []

    def load(positions):
        reads.append(list(map(int, positions)))
        return x[torch.as_tensor(positions)].numpy()

    src = LazySource(torch.arange(10) % 3, torch.arange(100, 110), load, chunk_size=4)
    sub = src.subset(np.array([7, 2, 5]))
    assert len(src) == 10 and len(sub) == 3 and reads == [] and not src.loaded
    assert sub.ids.tolist() == [107, 102, 105] and sub.y.tolist() == [1, 2, 2]
    assert torch.equal(torch.cat([xb for xb, _ in sub]), x[[7, 2, 5]]) and reads == [[7, 2, 5]]
    assert len(src.subset(torch.zeros(0, dtype=torch.int64))) == 0 and len(reads) == 1
    assert torch.equal(src.x, x) and reads[-1] == list(range(10)) and src.loaded
    assert torch.equal(src.subset([1, 3]).x, x[[1, 3]]) and len(reads) == 2  # after loading: no further reads
