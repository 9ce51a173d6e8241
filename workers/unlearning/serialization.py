"""One safetensors file per release: ``core.*`` (the network) and ``user.*`` (w_u) tensors, with
the metadata needed to rebuild the model from the file alone. A ``standard`` network (DESIGN §6.8)
is ``net.*`` tensors with format ``lethe.standard/1``; its metadata ``masked_classes`` (a JSON list)
names the classes it was made to forget, and :func:`load_model` returns it wrapped in a
:class:`MaskedClassifier` whose logits for them are −inf, so a pulled model never predicts them.

The metadata names the architecture by its registry key. Loading builds only a registered
architecture (built-ins, process registrations, ``lethe.architectures`` entry points) or one the
caller passes in ``architectures``; any other name is refused before anything is imported or built."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save
from torch import nn

from workers.unlearning.errors import ConfigError
from workers.unlearning.linearized import MixedLinearModel
from workers.unlearning.networks import Builder, build_network, resolve_architecture

FORMAT = "lethe.mixed_linear/1"
STANDARD_FORMAT = "lethe.standard/1"


class MaskedClassifier(nn.Module):
    """A served standard network: the logits of ``masked_classes`` are −inf (never predicted;
    their softmax probability is 0). The unmasked network is ``.network``."""

    def __init__(self, network: nn.Module, masked_classes: list[int] | tuple[int, ...] = ()) -> None:
        super().__init__()
        self.network = network
        self.masked_classes = tuple(sorted({int(c) for c in masked_classes}))
        self.metadata: dict[str, str] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        if not self.masked_classes:
            return out
        return out.index_fill(1, torch.tensor(self.masked_classes, device=out.device), float("-inf"))


def to_bytes(model: MixedLinearModel, user_override: dict[str, torch.Tensor] | None = None, metadata: dict[str, Any] | None = None) -> bytes:
    if model.architecture is None:
        raise ConfigError("the model has no architecture name; build it with MixedLinearModel.build(...)")
    tensors = {f"core.{k}": v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}
    user = user_override if user_override is not None else model.user_parameters()
    for k, v in user.items():
        tensors[f"user.{k}"] = v.detach().to("cpu", model.dtype_).contiguous()
    meta = {str(k): (v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for k, v in (metadata or {}).items()}
    meta.update(
        {
            "format": FORMAT,
            "architecture": model.architecture,
            "architecture_config": json.dumps(model.architecture_config, sort_keys=True),
            "linearize": model.linearize,
            "target_scale": repr(model.target_scale),
        }
    )
    return save(tensors, metadata=meta)


def standard_to_bytes(network: nn.Module, architecture: str, architecture_config: dict[str, Any],
                      masked_classes: list[int] | tuple[int, ...] = (), metadata: dict[str, Any] | None = None) -> bytes:
    """A standard network's file: its state as ``net.*`` and the classes it masks."""
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    meta = {str(k): (v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for k, v in (metadata or {}).items()}
    meta.update({
        "format": STANDARD_FORMAT,
        "architecture": architecture,
        "architecture_config": json.dumps(architecture_config, sort_keys=True),
        "masked_classes": json.dumps(sorted({int(c) for c in masked_classes})),
    })
    return save(tensors, metadata=meta)


def save_weights(path: str | Path, model: MixedLinearModel, user_override: dict[str, torch.Tensor] | None = None, metadata: dict[str, Any] | None = None) -> str:
    """Write atomically (temp file, fsync, rename); return the sha256 of the file."""
    data = to_bytes(model, user_override, metadata)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def read_metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})


def _network_of(meta: dict[str, str], architectures: Mapping[str, Builder] | None) -> tuple[str, dict, nn.Module]:
    """The file's registered architecture, built from its config (nothing else is imported)."""
    arch = meta.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise ConfigError("the weights file names no architecture")
    try:
        builder = resolve_architecture(arch, architectures)  # refuses unknown names; imports nothing for them
    except ConfigError as exc:
        raise ConfigError(f"refusing to load this weights file: {exc}") from None
    cfg = json.loads(meta["architecture_config"])
    if not isinstance(cfg, dict):
        raise ConfigError("the weights file's architecture_config is not a JSON object")
    return arch, cfg, build_network(arch, cfg, architectures={arch: builder})


def read_standard(data: bytes, device: str | torch.device = "cpu", *,
                  architectures: Mapping[str, Builder] | None = None) -> tuple[nn.Module, list[int], dict[str, str]]:
    """A standard file's unmasked network, its masked classes and its metadata."""
    meta = read_metadata(data)
    if meta.get("format") != STANDARD_FORMAT:
        raise ConfigError(f"not a Lethe standard weights file (format={meta.get('format')!r})")
    _, _, net = _network_of(meta, architectures)
    masked = json.loads(meta.get("masked_classes", "[]"))
    if not isinstance(masked, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in masked):
        raise ConfigError("the weights file's masked_classes is not a list of class indices")
    state = {k[len("net.") :]: v for k, v in load(data).items() if k.startswith("net.")}
    net.load_state_dict(state)
    return net.to(device).eval(), masked, meta


def load_model_from_bytes(data: bytes, device: str | torch.device = "cpu", *,
                          architectures: Mapping[str, Builder] | None = None) -> nn.Module:
    meta = read_metadata(data)
    if meta.get("format") == STANDARD_FORMAT:
        net, masked, meta = read_standard(data, device, architectures=architectures)
        served = MaskedClassifier(net, masked).eval()
        served.metadata = meta
        return served
    if meta.get("format") != FORMAT:
        raise ConfigError(f"not a Lethe weights file (format={meta.get('format')!r})")
    arch, cfg, net = _network_of(meta, architectures)
    tensors = load(data)
    core = {k[len("core.") :]: v for k, v in tensors.items() if k.startswith("core.")}
    net.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in core.items()})
    model = MixedLinearModel(net, meta["linearize"], float(meta["target_scale"]), architecture=arch, architecture_config=cfg, device=device)
    # load exactly (the file may hold float64 core weights)
    with torch.no_grad():
        state = model.network.state_dict()
        for k, v in core.items():
            state[k].copy_(v.to(state[k].dtype))
    model.set_user_parameters({k[len("user.") :]: v for k, v in tensors.items() if k.startswith("user.")})
    model.metadata = meta
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu", *,
               architectures: Mapping[str, Builder] | None = None) -> nn.Module:
    """A ready ``torch.nn.Module`` from the weights file and the architecture registry (plus
    ``architectures``, builders passed explicitly by key): f_ML for a mixed-linear file, the
    :class:`MaskedClassifier` for a standard one."""
    return load_model_from_bytes(Path(path).read_bytes(), device=device, architectures=architectures)
