"""Forgetting methods, one folder each: ``<name>/config.py`` (torch-free, one pydantic model) and
``<name>/method.py`` (the math, registered in :mod:`workers.unlearning.registry`).

This module is torch-free: the service imports it to validate ``method`` + ``method_config`` at
registration against the union of every method's config (DESIGN §6.8: one config source). Built-in
configs are found by looking for ``config.py`` in each sub-folder (a method's ``config.py`` exports
``CONFIG``); :func:`register_config` adds one from elsewhere (``registry.register`` calls it).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

GUARANTEES = ("exact", "certified", "heuristic")
FAMILIES = ("mixed_linear", "linear_head", "standard")
KINDS = ("samples", "class")
Guarantee = Literal["exact", "certified", "heuristic"]
Family = Literal["mixed_linear", "linear_head", "standard"]
Kind = Literal["samples", "class"]
NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


class MethodConfig(BaseModel):
    """What every method's config shares: JSON-storable, no unknown keys, ``method`` = the
    registry key (a ``Literal`` with that default, so it doubles as the discriminator), and the
    chunk size the runner streams data in."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # What the method serves, declared here (torch-free) so that the service can check a model's
    # ``family`` and a request's kind at registration; the method class must say the same.
    families: ClassVar[frozenset[str]] = frozenset()
    kinds: ClassVar[frozenset[str]] = frozenset({"samples"})

    method: str
    chunk_size: int = Field(4096, ge=1, description="samples per streamed chunk")

    @classmethod
    def model_problems(cls, architecture: str, num_classes: int) -> list[tuple[str, str]]:
        """(field, message) for each reason this method cannot serve a model with this
        architecture and number of classes; registration refuses them (422). None by default."""
        return []


_CONFIGS: dict[str, type[MethodConfig]] = {}
_discovered = False


def config_name(cls: type[BaseModel]) -> str:
    """The registry key a config class declares (the default of its ``method`` field)."""
    field = cls.model_fields.get("method")
    if field is None or not isinstance(field.default, str):
        raise TypeError(f"{cls.__name__} must declare `method: Literal[\"<name>\"] = \"<name>\"`")
    return field.default


def check_config_class(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, MethodConfig)):
        raise TypeError(f"the config of {name!r} must subclass workers.unlearning.methods.MethodConfig")
    if cls.model_config.get("extra") != "forbid":
        raise TypeError(f"the config of {name!r} must forbid unknown keys")
    if config_name(cls) != name:
        raise TypeError(f"the config of {name!r} says method={config_name(cls)!r}")
    for attr, allowed in (("families", FAMILIES), ("kinds", KINDS)):
        value = getattr(cls, attr, None)
        if not isinstance(value, frozenset) or not value or not value <= set(allowed):
            raise TypeError(f"the config of {name!r} must declare {attr} as a non-empty frozenset of {allowed}")
    try:
        cls()
    except ValidationError as exc:
        raise TypeError(f"the config of {name!r} must be valid with its defaults: {exc}") from None


def register_config(cls: type[MethodConfig]) -> type[MethodConfig]:
    name = config_name(cls)
    if not NAME.match(name):
        raise TypeError(f"method name {name!r} must be lower_snake (a-z, 0-9, _), at most 48 characters")
    check_config_class(name, cls)
    _CONFIGS[name] = cls
    return cls


def unregister_config(name: str) -> None:
    _CONFIGS.pop(name, None)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg:
            try:
                mod = importlib.import_module(f"{__name__}.{info.name}.config")
            except ModuleNotFoundError:
                continue
            register_config(mod.CONFIG)
    _discovered = True


def config_classes() -> dict[str, type[MethodConfig]]:
    """Every known method's config class, by method name."""
    _discover()
    return dict(_CONFIGS)


def parse_config(method: str, raw: dict[str, Any] | None) -> MethodConfig:
    """Validate ``raw`` as the config of ``method``. Raises ``KeyError`` for an unknown method
    and pydantic's ``ValidationError`` for a bad config (unknown keys included)."""
    classes = config_classes()
    if method not in classes:
        raise KeyError(method)
    data = dict(raw or {})
    data.setdefault("method", method)
    return classes[method].model_validate(data)
