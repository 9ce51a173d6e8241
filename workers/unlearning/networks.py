"""Built-in networks and the ``module:function`` import path for user networks."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from workers.unlearning.errors import ConfigError


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


BUILTINS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn}


def build_network(architecture: str, config: dict[str, Any] | None = None) -> nn.Module:
    """``mlp``/``cnn`` (built-in) or ``package.module:function`` called with ``**config``."""
    config = dict(config or {})
    if architecture in BUILTINS:
        return BUILTINS[architecture](**config)
    if ":" not in architecture:
        raise ConfigError(f"unknown architecture {architecture!r}: use one of {sorted(BUILTINS)} or 'module:function'")
    mod_name, _, fn_name = architecture.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import architecture {architecture!r}: {exc}") from exc
    net = fn(**config)
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{architecture!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net
