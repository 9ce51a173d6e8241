"""The ``standard`` weights file with forgotten classes (issue 14): ``masked_classes`` in its
metadata, served by ``load_model`` as a module whose logits for them are −inf, the unmasked
network kept for measurement; a malformed list is refused; an upload cannot declare one."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save as st_save

from workers.unlearning import load_model_from_bytes, standard
from workers.unlearning.errors import ConfigError
from workers.unlearning.methods.lcodec.config import LCodecConfig

ARCH = {"in_features": 4, "hidden": [5], "num_classes": 4}


def _model(masked=()):
    m = standard.build("mlp", ARCH, LCodecConfig(device="cpu", seed=3))
    m.masked_classes = list(masked)
    return m


def test_masked_classes_are_minus_infinity_when_served_and_the_unmasked_network_stays_reachable():
    m = _model([3, 1])
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    served = load_model_from_bytes(standard.to_bytes(m, metadata={"model": "m"}))
    assert isinstance(served, standard.MaskedClassifier) and served.masked_classes == (1, 3)
    with torch.no_grad():
        raw, out = m.network(x), served(x)
        torch.testing.assert_close(served.network(x), raw)  # measured without the mask
    assert torch.isneginf(out[:, [1, 3]]).all() and set(out.argmax(1).tolist()) <= {0, 2}
    torch.testing.assert_close(out[:, [0, 2]], raw[:, [0, 2]])
    assert torch.softmax(out, 1)[:, [1, 3]].max() == 0
    assert standard.from_bytes(standard.to_bytes(m)).masked_classes == [1, 3]
    plain = load_model_from_bytes(standard.to_bytes(_model()))  # nothing forgotten: the network itself
    assert not isinstance(plain, standard.MaskedClassifier) and "masked_classes" not in plain.metadata


@pytest.mark.parametrize("bad", ["[true]", "[-1]", "[1.5]", "{\"a\": 1}", "not json"])
def test_a_malformed_masked_classes_list_is_refused(bad):
    data = standard.to_bytes(_model(), metadata={"masked_classes": bad})
    with pytest.raises(ConfigError, match="masked_classes"):
        standard.from_bytes(data)


def test_an_uploaded_checkpoint_cannot_declare_masked_classes():
    state = {k: v.contiguous() for k, v in _model().network.state_dict().items()}
    data = st_save(state, metadata={"masked_classes": "[0, 1, 2]"})
    assert standard.from_bytes(data, architecture="mlp", architecture_config=ARCH).masked_classes == []
