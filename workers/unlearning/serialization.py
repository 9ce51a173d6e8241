"""One safetensors file per release: ``core.*`` (the network) and ``user.*`` (w_u) tensors, with
the metadata needed to rebuild the model from the file alone.

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

from workers.unlearning.errors import ConfigError
from workers.unlearning.files import read_metadata
from workers.unlearning.linearized import MixedLinearModel
from workers.unlearning.networks import Builder, build_network, resolve_architecture
from workers.unlearning.standard import FORMAT as STANDARD_FORMAT
from workers.unlearning.standard import from_bytes as standard_from_bytes

FORMAT = "lethe.mixed_linear/1"
LINEAR_HEAD_FORMAT = "lethe.linear_head/1"  # certified_removal.method.FORMAT (kept equal by its tests)


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


def load_model_from_bytes(data: bytes, device: str | torch.device = "cpu", *,
                          architectures: Mapping[str, Builder] | None = None, dtype: str | torch.dtype = "auto") -> MixedLinearModel:
    meta = read_metadata(data)
    if meta.get("format") == LINEAR_HEAD_FORMAT:  # a certified_removal release: extractor + linear head
        from workers.unlearning.methods.certified_removal.method import load_linear_head

        return load_linear_head(data, architectures=architectures)
    if meta.get("format") == STANDARD_FORMAT:  # a standard-family network: the plain nn.Module
        standard = standard_from_bytes(data, device=device, architectures=architectures)
        standard.network.metadata = meta
        return standard.network
    if meta.get("format") != FORMAT:
        raise ConfigError(f"not a Lethe mixed-linear weights file (format={meta.get('format')!r})")
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
    tensors = load(data)
    net = build_network(arch, cfg, architectures={arch: builder})
    core = {k[len("core.") :]: v for k, v in tensors.items() if k.startswith("core.")}
    net.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in core.items()})
    model = MixedLinearModel(net, meta["linearize"], float(meta["target_scale"]), architecture=arch, architecture_config=cfg, device=device,
                              dtype=dtype)
    # load exactly (the file may hold float64 core weights)
    with torch.no_grad():
        state = model.network.state_dict()
        for k, v in core.items():
            state[k].copy_(v.to(state[k].dtype))
    model.set_user_parameters({k[len("user.") :]: v for k, v in tensors.items() if k.startswith("user.")})
    model.metadata = meta
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu", *,
               architectures: Mapping[str, Builder] | None = None) -> MixedLinearModel:
    """A ready ``torch.nn.Module`` from the weights file and the architecture registry (plus
    ``architectures``, builders passed explicitly by key): f_ML for a mixed-linear file, the
    network itself for a ``standard``-family file, and a ``linear_head`` release
    (``certified_removal``) as its ``LinearHeadNet`` (scores, ``.predict``)."""
    return load_model_from_bytes(Path(path).read_bytes(), device=device, architectures=architectures)
