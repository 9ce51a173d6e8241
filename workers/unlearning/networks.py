"""Built-in networks and the registry of architectures (DESIGN §3, §10: no code from the outside).

A network is built from a registry key only:

* the built-ins (:data:`BUILTINS`: ``mlp``, ``cnn``, and the homogeneous scalar-output ``linear`` and
  ``two_layer_relu``);
* builders registered in this process with :func:`register_architecture` (the worker registers
  those an administrator declared in settings with :func:`declare_architecture`);
* entry points of the group ``lethe.architectures`` installed in this environment;
* builders the caller passes explicitly (``architectures={"name": builder}``).

Any other name (``os:system``, ``builtins:eval``, a path named by an API request or by a weights
file's metadata) is refused with a :class:`ConfigError` that lists the known keys; nothing is
imported or called for it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from workers.unlearning.errors import ConfigError

ENTRY_POINT_GROUP = "lethe.architectures"
_TARGET = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")

Builder = Callable[..., nn.Module]


def mlp(in_features: int, num_classes: int, hidden: list[int] | tuple[int, ...] = (128,), activation: str = "relu") -> nn.Sequential:
    """A multi-layer perceptron for vectors. Inputs of any shape are flattened first."""
    act: Callable[[], nn.Module] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}[activation]
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), act()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(
    in_channels: int,
    height: int,
    width: int,
    num_classes: int,
    channels: list[int] | tuple[int, ...] = (16, 32),
    hidden: int = 64,
) -> nn.Sequential:
    """A small CNN for small images (e.g. 8x8 digits): conv-relu blocks, global pooling, head."""
    layers: list[nn.Module] = []
    c = in_channels
    for out in channels:
        layers += [nn.Conv2d(c, out, kernel_size=3, padding=1), nn.ReLU()]
        c = out
    layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(c * 4, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers)


def linear(in_features: int, num_classes: int = 2) -> nn.Sequential:
    """A bias-free linear predictor with one scalar output, N(x; w) = wᵀx: the homogeneous model
    ``gradient_ascent`` serves (binary labels as the output's sign, so ``num_classes`` must be 2)."""
    if num_classes != 2:
        raise ConfigError(f"linear has one scalar output for binary labels; num_classes must be 2, got {num_classes}")
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 1, bias=False))


class TwoLayerReLU(nn.Module):
    """N(x; W) = Σ_j v_j·relu(w_jᵀx): bias-free, scalar output, and the output layer ``v`` fixed (a
    buffer, never trained) with v_j = ±1/√m, half of each sign. N is 1-homogeneous in the trained W,
    which the max-margin theory behind ``gradient_ascent`` needs (Melamed et al., 2025)."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_features, hidden, bias=False)
        signs = torch.where(torch.arange(hidden) % 2 == 0, 1.0, -1.0)
        self.register_buffer("output", signs / math.sqrt(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(x.flatten(1)))
        return (h * self.output.to(h.dtype)).sum(dim=1, keepdim=True)


def two_layer_relu(in_features: int, hidden: int = 64, num_classes: int = 2) -> TwoLayerReLU:
    """:class:`TwoLayerReLU` (binary labels: ``num_classes`` must be 2)."""
    if num_classes != 2:
        raise ConfigError(f"two_layer_relu has one scalar output for binary labels; num_classes must be 2, got {num_classes}")
    return TwoLayerReLU(in_features, hidden)


BUILTINS: dict[str, Builder] = {"mlp": mlp, "cnn": cnn, "linear": linear, "two_layer_relu": two_layer_relu}

_lock = threading.Lock()
_registered: dict[str, Builder] = {}
_declared: dict[str, str] = {}


def register_architecture(key: str, builder: Builder) -> None:
    """Register a builder under ``key`` in this process (a built-in key cannot be replaced)."""
    if key in BUILTINS:
        raise ConfigError(f"{key!r} is a built-in architecture and cannot be replaced")
    if not callable(builder):
        raise ConfigError(f"the builder of {key!r} is not callable")
    with _lock:
        _registered[key] = builder


def declare_architecture(key: str, target: str) -> None:
    """Register ``key`` as the administrator's ``package.module:function``, imported when first
    built. ``target`` comes from the server's settings, never from a request or a file."""
    if key in BUILTINS:
        raise ConfigError(f"{key!r} is a built-in architecture and cannot be declared again")
    if not _TARGET.match(target):
        raise ConfigError(f"declared architecture {key!r}: target {target!r} is not 'package.module:function'")
    with _lock:
        _declared[key] = target


def forget_registrations() -> None:
    """Drop every process-level registration and declaration (tests)."""
    with _lock:
        _registered.clear()
        _declared.clear()


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def known_architectures(architectures: Mapping[str, Builder] | None = None) -> list[str]:
    """Every key that :func:`build_network` accepts here (no entry point is loaded)."""
    with _lock:
        keys = set(BUILTINS) | set(_registered) | set(_declared)
    return sorted(keys | set(_entry_points()) | set(architectures or {}))


def _load_target(key: str, target: str) -> Builder:
    mod_name, _, fn_name = target.partition(":")
    try:
        return getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"declared architecture {key!r} ({target}) cannot be loaded: {exc}") from exc


def resolve_architecture(architecture: str, architectures: Mapping[str, Builder] | None = None) -> Builder:
    """The builder registered under ``architecture``; a :class:`ConfigError` naming the known keys
    for anything else (nothing is imported for an unknown name)."""
    if architectures and architecture in architectures:
        return architectures[architecture]
    if architecture in BUILTINS:
        return BUILTINS[architecture]
    with _lock:
        builder = _registered.get(architecture)
        target = _declared.get(architecture)
    if builder is not None:
        return builder
    if target is not None:
        return _load_target(architecture, target)
    ep = _entry_points().get(architecture)
    if ep is not None:
        try:
            return ep.load()
        except Exception as exc:  # noqa: BLE001 - an installed entry point that is broken
            raise ConfigError(f"architecture entry point {architecture!r} ({ep.value}) cannot be loaded: {exc}") from exc
    shown = architecture if len(architecture) <= 80 else architecture[:77] + "..."
    raise ConfigError(
        f"architecture {shown!r} is not registered here; known architectures: {', '.join(known_architectures(architectures))}. "
        f"Register it (an entry point in {ENTRY_POINT_GROUP!r}, or pass architectures={{name: builder}}); "
        "names are never imported"
    )


def build_network(architecture: str, config: dict[str, Any] | None = None, *,
                  architectures: Mapping[str, Builder] | None = None) -> nn.Module:
    """Build the registered ``architecture`` with ``**config``."""
    fn = resolve_architecture(architecture, architectures)
    try:
        net = fn(**dict(config or {}))
    except TypeError as exc:
        raise ConfigError(f"architecture {architecture!r} does not accept this config: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{architecture!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net
