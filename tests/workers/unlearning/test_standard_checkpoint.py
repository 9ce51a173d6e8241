"""A ``standard`` checkpoint against its architecture (names, shapes, dtypes, finite values),
and the weights file round trip (library level; the HTTP path is in the pipeline tests)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save as st_save

from workers.unlearning import load_model_from_bytes, standard
from workers.unlearning.errors import InvalidDataError
from workers.unlearning.methods.lcodec.config import LCodecConfig

ARCH = {"in_features": 4, "hidden": [3], "num_classes": 2}


def _state():
    return {k: v.clone() for k, v in standard.build("mlp", ARCH, LCodecConfig(device="cpu")).network.state_dict().items()}


def _load(tensors):
    return standard.from_bytes(st_save(tensors), architecture="mlp", architecture_config=ARCH)


@pytest.mark.parametrize("case, message", [
    ("missing", "missing tensor '1.bias'"), ("extra", "unexpected tensor 'head.weight'"), ("shape", "has shape [4]"),
    ("nan", "NaN or infinity"), ("inf", "NaN or infinity"), ("dtype", "dtype torch.int64"),
    ("smuggled", "unexpected tensor 'lethe.mask.1.weight'"),
])
def test_each_bad_tensor_is_named(case, message):
    state = _state()
    if case == "missing":
        del state["1.bias"]
    elif case == "extra":
        state["head.weight"] = torch.zeros(1)
    elif case == "shape":
        state["1.bias"] = torch.zeros(4)
    elif case in ("nan", "inf"):
        state["1.weight"][1, 2] = float("nan") if case == "nan" else float("inf")
    elif case == "dtype":
        state["1.bias"] = state["1.bias"].to(torch.int64)
    else:  # an upload may not pose as Lethe's private selection masks
        state["lethe.mask.1.weight"] = torch.ones(3, 4, dtype=torch.uint8)
    with pytest.raises(InvalidDataError, match="does not fit the architecture") as err:
        _load(state)
    assert message in str(err.value)
    with pytest.raises(InvalidDataError, match="not a safetensors"):
        standard.from_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage", architecture="mlp", architecture_config=ARCH)


def test_a_good_checkpoint_loads_exactly_and_the_served_file_round_trips():
    state = _state()
    model = _load(state)
    assert all(torch.equal(model.network.state_dict()[k], v) for k, v in state.items())
    assert model.selection is None
    module = load_model_from_bytes(standard.to_bytes(model, metadata={"model": "m"}))
    x = torch.randn(5, 4)
    assert torch.equal(module(x), model(x))
