"""One registry of forgetting methods; the key doubles as the config discriminator."""

from __future__ import annotations

from workers.unlearning.errors import ConfigError
from workers.unlearning.methods.mixed_linear.method import MixedLinear

_REGISTRY: dict[str, object] = {}


def register(method) -> None:
    _REGISTRY[method.name] = method


def get_method(name: str):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown forgetting method {name!r}; registered: {sorted(_REGISTRY)}") from None


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


register(MixedLinear())
