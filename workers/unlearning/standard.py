"""The ``standard`` family: an ordinary network trained the ordinary way (DESIGN §6.8).

Shared by every method of the family (``lcodec``, and later ``gradient_ascent``,
``svd_projection``): the model object, the training recipe (:func:`train`, which the ``retrain``
fallback repeats from scratch), evaluation and the loss-threshold MIA, the weights file (a
safetensors ``state_dict`` with the architecture in its metadata) and the checkpoint check.

A network made to forget whole classes (``svd_projection``) keeps them in ``masked_classes``
(metadata of its files): :func:`served` wraps it in a :class:`MaskedClassifier` whose logits for
them are −inf, so a pulled model never predicts them; everything measured (evaluation, gates,
MIA) uses the unmasked network, since the mask would make the gates pass by construction.

Loss convention (the same in training, gradients, HVPs and evaluation): per sample
``ℓ_i(θ) = CE(f(x_i; θ), y_i) + (wd/2)‖θ‖²`` — torch's ``weight_decay`` adds ``wd·θ`` to the
gradient, which is the gradient of that regulariser. Evaluation and the MIA use the CE term only.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn
from torch.nn import functional as F

from workers.unlearning.data import TensorSource
from workers.unlearning.errors import ConfigError, InvalidDataError
from workers.unlearning.evaluation import auc
from workers.unlearning.linearized import resolve_device
from workers.unlearning.networks import Builder, build_network, resolve_architecture

FORMAT = "lethe.standard/1"
Progress = Callable[[dict], None] | None


class StandardModel:
    """A network with its registry name and config; float32 parameters.

    ``selection`` (parameter name → bool mask) and ``sigma`` describe the last removal step of a
    method that noises only some parameters (lcodec's θ_S); they travel with the private state so
    the release, computed in a later step, noises exactly those. ``masked_classes``: the classes
    it was made to forget, masked when served (never when measured)."""

    def __init__(self, network: nn.Module, architecture: str, architecture_config: dict[str, Any], device: str | torch.device = "cpu") -> None:
        self.device_ = resolve_device(device)
        self.network = network.to(self.device_, torch.float32)
        self.network.eval()
        self.architecture = architecture
        self.architecture_config = dict(architecture_config)
        self.selection: dict[str, torch.Tensor] | None = None
        self.sigma = 0.0
        self.masked_classes: list[int] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.to(self.device_, torch.float32))

    def parameters(self) -> dict[str, torch.Tensor]:
        return dict(self.network.named_parameters())


class MaskedClassifier(nn.Module):
    """A served network that never names ``masked_classes``: their logits are −inf (softmax 0).
    The unmasked network is ``.network``."""

    def __init__(self, network: nn.Module, masked_classes: list[int] | tuple[int, ...]) -> None:
        super().__init__()
        self.network = network
        self.masked_classes = tuple(sorted({int(c) for c in masked_classes}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return out.index_fill(1, torch.tensor(self.masked_classes, device=out.device, dtype=torch.long), float("-inf"))


def served(model: StandardModel) -> nn.Module:
    """What ``load_model`` hands out: the network itself, or masked when it forgot classes."""
    masked = getattr(model, "masked_classes", None)
    return MaskedClassifier(model.network, masked).eval() if masked else model.network


def build(architecture: str, architecture_config: dict[str, Any] | None, cfg, *, architectures: Mapping[str, Builder] | None = None) -> StandardModel:
    """A fresh network, initialised deterministically from ``cfg.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_network(architecture, architecture_config, architectures=architectures)
    return StandardModel(net, architecture, architecture_config or {}, device=cfg.device)


def refuse_core(core: TensorSource) -> None:
    """A ``standard`` network trains on its ``user`` split only (every sample belongs to a
    subject, so every sample can be forgotten); samples in ``core`` are refused."""
    if len(core):
        raise InvalidDataError(f"a standard-family model trains on its user split; {len(core)} core samples are not used: upload them as user samples")


def check_data(model: StandardModel, source: TensorSource, what: str) -> int:
    """Refuse an empty set, inputs that do not fit the network, NaN, labels out of range.
    Returns the number of classes."""
    if len(source) == 0:
        raise InvalidDataError(f"the {what} set is empty")
    x, _ = next(iter(source))
    try:
        with torch.no_grad():
            out = model(x[:1])
    except RuntimeError as exc:
        raise InvalidDataError(f"inputs of shape {tuple(x.shape[1:])} per sample do not fit the network: {exc}") from exc
    if out.ndim != 2:
        raise InvalidDataError(f"the network returns shape {tuple(out.shape)}; a classifier must return (batch, classes)")
    source.validate(int(out.shape[1]))
    return int(out.shape[1])


def train(model: StandardModel, source: TensorSource, cfg, progress: Progress = None) -> dict:
    """The recipe: ``cfg.epochs`` passes of minibatch ``cfg.optimizer`` on mean CE with
    ``cfg.weight_decay``, shuffled by a generator seeded with ``cfg.seed`` (deterministic on CPU)."""
    check_data(model, source, "training")
    net = model.network
    params = [p for p in net.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(source)
    start, last, loss_sum = time.perf_counter(), 0.0, float("nan")
    net.train()
    try:
        for epoch in range(cfg.epochs):
            perm = torch.randperm(n, generator=gen)
            loss_sum = 0.0
            for i in range(0, n, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(source.x[idx]), source.y[idx].to(model.device_))
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(idx)
            if not math.isfinite(loss_sum):
                raise InvalidDataError(f"training diverged at epoch {epoch + 1} (loss {loss_sum}): lower the learning rate")
            now = time.monotonic()
            if progress is not None and now - last >= 0.25:
                last = now
                progress({"phase": "train", "epoch": epoch + 1, "loss": loss_sum / n})
    finally:
        net.eval()
    return {"epochs": cfg.epochs, "loss": loss_sum / n if cfg.epochs else None, "seconds": time.perf_counter() - start}


def per_sample_loss(model: StandardModel, source: TensorSource) -> torch.Tensor:
    """CE per sample (float64, CPU)."""
    out = []
    with torch.no_grad():
        for x, y in source:
            out.append(F.cross_entropy(model(x), y.to(model.device_), reduction="none").to(torch.float64).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def evaluate(model: StandardModel, source: TensorSource) -> dict:
    """{"accuracy", "loss" (mean CE), "n"}."""
    if len(source) == 0:
        return {"accuracy": None, "loss": None, "n": 0}
    correct, losses = 0, []
    with torch.no_grad():
        for x, y in source:
            f = model(x)
            y = y.to(model.device_)
            correct += int((f.argmax(dim=1) == y).sum())
            losses.append(F.cross_entropy(f, y, reduction="none").to(torch.float64).cpu())
    return {"accuracy": correct / len(source), "loss": float(torch.cat(losses).mean()), "n": len(source)}


def membership_auc(model: StandardModel, forget: TensorSource, eval_: TensorSource) -> float:
    """Loss-threshold attack, forgotten vs eval samples (lower loss = "member"); 0.5 = unseen."""
    return auc(-per_sample_loss(model, forget), -per_sample_loss(model, eval_))


# ----------------------------------------------------------------------------- files
def to_bytes(model: StandardModel, params: Mapping[str, torch.Tensor] | None = None, metadata: Mapping[str, Any] | None = None,
             extra: Mapping[str, torch.Tensor] | None = None) -> bytes:
    """The network's ``state_dict`` as safetensors (``params`` replace parameters by name, e.g.
    the noised ones of a release), the architecture in the metadata; ``extra`` tensors are stored
    under ``lethe.<name>`` (private files only)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}
    for k, v in (params or {}).items():
        if k not in tensors:
            raise ConfigError(f"{k!r} is not a tensor of the network")
        tensors[k] = v.detach().to("cpu", tensors[k].dtype).contiguous()
    for k, v in (extra or {}).items():
        tensors[f"lethe.{k}"] = v.detach().cpu().contiguous()
    meta = {str(k): (v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for k, v in (metadata or {}).items()}
    meta.update({"format": FORMAT, "family": "standard", "architecture": model.architecture,
                 "architecture_config": json.dumps(model.architecture_config, sort_keys=True)})
    masked = getattr(model, "masked_classes", None)  # only a class-forgetting method's model has them
    if masked:
        meta["masked_classes"] = json.dumps(sorted(masked))
    return st_save(tensors, metadata=meta)


def check_state_dict(network: nn.Module, tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """What is wrong with ``tensors`` as this network's ``state_dict``: missing, unexpected,
    mis-shaped, wrong-dtype or non-finite tensors (empty list: it fits)."""
    want = network.state_dict()
    problems = [f"missing tensor {k!r} {list(v.shape)}" for k, v in want.items() if k not in tensors]
    problems += [f"unexpected tensor {k!r}" for k in tensors if k not in want]
    for k, v in tensors.items():
        ref = want.get(k)
        if ref is None:
            continue
        if tuple(v.shape) != tuple(ref.shape):
            problems.append(f"tensor {k!r} has shape {list(v.shape)}, the architecture wants {list(ref.shape)}")
        elif v.is_floating_point() != ref.is_floating_point() or (not ref.is_floating_point() and v.dtype != ref.dtype):
            problems.append(f"tensor {k!r} has dtype {v.dtype}, the architecture wants {ref.dtype}")
        elif v.is_floating_point() and not bool(torch.isfinite(v).all()):
            problems.append(f"tensor {k!r} holds NaN or infinity")
    return problems


def require_state_dict(network: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """:func:`check_state_dict`, raising ``InvalidDataError`` with the first ten problems."""
    problems = check_state_dict(network, tensors)
    if problems:
        raise InvalidDataError("the checkpoint does not fit the architecture: " + "; ".join(problems[:10])
                               + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""))


def from_bytes(data: bytes, device: str | torch.device = "cpu", *, architectures: Mapping[str, Builder] | None = None,
               architecture: str | None = None, architecture_config: dict[str, Any] | None = None) -> StandardModel:
    """A model from a weights file: a Lethe ``standard`` file (architecture from its metadata),
    or a bare ``state_dict`` checkpoint when ``architecture`` is given. Every tensor is checked
    against the architecture first (:func:`check_state_dict`); nothing unknown is imported."""
    try:
        tensors = st_load(data)
        meta = _metadata(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure of untrusted bytes is bad input
        raise InvalidDataError(f"not a safetensors file: {exc}") from None
    lethe_file = architecture is None  # a file Lethe wrote may carry private ``lethe.*`` tensors; an upload may not
    if architecture is None:
        if meta.get("format") != FORMAT:
            raise ConfigError(f"not a Lethe standard weights file (format={meta.get('format')!r})")
        architecture = meta.get("architecture")
        architecture_config = json.loads(meta.get("architecture_config", "{}"))
    if not isinstance(architecture, str) or not isinstance(architecture_config, dict):
        raise ConfigError("the weights file names no architecture")
    try:
        builder = resolve_architecture(architecture, architectures)
    except ConfigError as exc:
        raise ConfigError(f"refusing to load this weights file: {exc}") from None
    net = build_network(architecture, architecture_config, architectures={architecture: builder})
    private = {k[len("lethe."):]: v for k, v in tensors.items() if lethe_file and k.startswith("lethe.")}
    state = {k: v for k, v in tensors.items() if not (lethe_file and k.startswith("lethe."))}
    require_state_dict(net, state)
    net.load_state_dict({k: v.to(net.state_dict()[k].dtype) for k, v in state.items()})
    model = StandardModel(net, architecture, architecture_config, device=device)
    masks = {k[len("mask."):]: v.to(torch.bool) for k, v in private.items() if k.startswith("mask.")}
    model.selection = masks or None
    model.sigma = float(meta.get("sigma", 0.0))
    model.masked_classes = _masked_classes(meta) if lethe_file else []
    model.metadata = meta
    return model


def _masked_classes(meta: Mapping[str, str]) -> list[int]:
    try:
        masked = json.loads(meta.get("masked_classes", "[]"))
    except ValueError:
        masked = None
    if not isinstance(masked, list) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in masked):
        raise ConfigError("the weights file's masked_classes is not a list of class indices")
    return sorted(set(masked))


def _metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {}) or {}
