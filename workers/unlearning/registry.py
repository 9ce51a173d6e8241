"""One registry of forgetting methods; the key doubles as the config discriminator (DESIGN §6.8).

``register(method)`` validates the entry (name, guarantee, families, kinds, config class, private
artifacts, the operations the runner calls) and registers its config with the torch-free config
registry the service validates against. Adding a method: a folder ``methods/<name>/`` with
``config.py`` and ``method.py``, and one ``register(...)`` line below.
"""

from __future__ import annotations

from workers.unlearning.errors import ConfigError
from workers.unlearning.methods import FAMILIES, GUARANTEES, KINDS, NAME, check_config_class, register_config, unregister_config
from workers.unlearning.methods.base import OPTIONAL, REQUIRED, ForgettingMethod
from workers.unlearning.methods.certified_removal.method import CertifiedRemoval
from workers.unlearning.methods.gradient_ascent.method import GradientAscent
from workers.unlearning.methods.lcodec.method import LCodec
from workers.unlearning.methods.mixed_linear.method import MixedLinear
from workers.unlearning.methods.svd_projection.method import SvdProjection

_REGISTRY: dict[str, ForgettingMethod] = {}
_BUILTIN: set[str] = set()


def _validate(method: object) -> None:
    name = getattr(method, "name", None)
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"method name {name!r} must be lower_snake (a-z, 0-9, _), at most 48 characters")
    guarantee = getattr(method, "guarantee", None)
    if guarantee not in GUARANTEES:
        raise ConfigError(f"{name}: guarantee {guarantee!r} is not one of {GUARANTEES}")
    for attr, allowed in (("families", FAMILIES), ("kinds", KINDS)):
        value = getattr(method, attr, None)
        if not isinstance(value, (set, frozenset, tuple, list)) or not value or not set(value) <= set(allowed):
            raise ConfigError(f"{name}: {attr} must be a non-empty subset of {allowed}, got {value!r}")
    try:
        check_config_class(name, getattr(method, "config_cls", None))
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    for attr in ("families", "kinds"):
        if frozenset(getattr(method, attr)) != getattr(method.config_cls, attr):
            raise ConfigError(f"{name}: {attr} {sorted(getattr(method, attr))} differ from its config's "
                              f"{sorted(getattr(method.config_cls, attr))} (the service checks the config's)")
    artifacts = getattr(method, "private_artifacts", None)
    if (not isinstance(artifacts, tuple) or not artifacts or len(set(artifacts)) != len(artifacts)
            or not all(isinstance(a, str) and NAME.match(a) for a in artifacts)):
        raise ConfigError(f"{name}: private_artifacts must be a non-empty tuple of distinct lower_snake names, got {artifacts!r}")
    missing = [op for op in REQUIRED if not callable(getattr(method, op, None))]
    missing += [op for op in OPTIONAL if method.supports(op) and not callable(getattr(method, op, None))] if not missing else []
    if missing:
        raise ConfigError(f"{name}: missing operations {missing}")


def register(method: ForgettingMethod, *, replace: bool = False) -> ForgettingMethod:
    """Validate and add ``method``. A name already taken is refused unless ``replace``; a
    built-in method is never replaced."""
    _validate(method)
    if method.name in _REGISTRY and (not replace or method.name in _BUILTIN):
        raise ConfigError(f"a method named {method.name!r} is already registered")
    register_config(method.config_cls)
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method added by :func:`register` (tests, plug-ins); built-ins stay."""
    if name in _BUILTIN:
        raise ConfigError(f"{name!r} is built in")
    _REGISTRY.pop(name, None)
    unregister_config(name)


def get_method(name: str) -> ForgettingMethod:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown forgetting method {name!r}; registered: {sorted(_REGISTRY)}") from None


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


for _builtin in (MixedLinear(), CertifiedRemoval(), LCodec(), GradientAscent(), SvdProjection()):  # one line per built-in method
    register(_builtin)
    _BUILTIN.add(_builtin.name)
