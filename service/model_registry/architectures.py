"""The server's architecture registry and the limits checked at registration (DESIGN §3, §10).

No torch here. A model names a registry key:

* a built-in (``mlp``, ``cnn``, ``linear``, ``two_layer_relu``): its config is validated by a pydantic model, completed from the
  model's ``input_shape`` and ``num_classes`` and measured arithmetically (parameters, layers);
* an entry the administrator declared (``settings.architectures.declared``: key ->
  ``package.module:function``) or installed as an entry point of ``lethe.architectures``: it is
  built on the meta device in a short-lived subprocess (:mod:`workers.unlearning.probe`) with a
  memory cap and a timeout, and measured there.

Anything else is a 422 naming the known keys; the name is never imported or called. Every limit
in ``settings.limits`` is a 422 with the limit in the message; nothing is written.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from service.core.config import LimitsSettings, Settings
from service.core.errors import ValidationFailed

ENTRY_POINT_GROUP = "lethe.architectures"
_LAST_K = re.compile(r"^last:(\d+)$")

# method_config keys that are budgets, and the limit each is held to
BUDGETS: dict[str, str] = {
    "max_iter": "max_iterations",
    "max_newton_steps": "max_newton_steps",
    "core_epochs": "max_epochs",
    "epochs": "max_epochs",
    "chunk_size": "max_chunk_size",
    "core_batch_size": "max_chunk_size",
}


class ArchitectureUnknown(ValidationFailed):
    type, title = "architecture-unknown", "Unknown architecture"


class ArchitectureInvalid(ValidationFailed):
    type, title = "architecture-invalid", "Invalid architecture config"


class LimitExceeded(ValidationFailed):
    type, title = "limit-exceeded", "A limit was exceeded"


def _fail(cls: type[ValidationFailed], field: str, message: str, **extra: Any) -> ValidationFailed:
    return cls(message, errors=[{"field": field, "message": message, "kind": cls.type}], **extra)


# ----------------------------------------------------------------------------- built-ins
class MlpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    in_features: StrictInt | None = Field(None, ge=1)
    num_classes: StrictInt | None = Field(None, ge=2)
    hidden: list[StrictInt] = Field(default_factory=lambda: [128])
    activation: Literal["relu", "tanh", "gelu"] = "relu"


class CnnConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    in_channels: StrictInt | None = Field(None, ge=1)
    height: StrictInt | None = Field(None, ge=1)
    width: StrictInt | None = Field(None, ge=1)
    num_classes: StrictInt | None = Field(None, ge=2)
    channels: list[StrictInt] = Field(default_factory=lambda: [16, 32])
    hidden: StrictInt = Field(64, ge=1)


class LinearConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    in_features: StrictInt | None = Field(None, ge=1)
    num_classes: StrictInt | None = Field(None, ge=2)


class TwoLayerReluConfig(LinearConfig):
    hidden: StrictInt = Field(64, ge=1)


@dataclass(frozen=True)
class Measure:
    parameters: int
    layers: int  # layers with parameters: what ``linearize: last:K`` counts


def _positive(values: list[int], field: str) -> None:
    for i, v in enumerate(values):
        if v < 1:
            raise _fail(ArchitectureInvalid, f"architecture_config.{field}", f"architecture_config.{field}[{i}] must be at least 1, got {v}")


def _same(field: str, given: int | None, expected: int, why: str) -> int:
    if given is not None and given != expected:
        raise _fail(ArchitectureInvalid, f"architecture_config.{field}",
                    f"architecture_config.{field} is {given} but {why} is {expected}")
    return expected


def _mlp(config: dict[str, Any], input_shape: list[int], num_classes: int, limits: LimitsSettings) -> tuple[dict[str, Any], Measure]:
    cfg = MlpConfig.model_validate(config)
    _positive(cfg.hidden, "hidden")
    if len(cfg.hidden) + 1 > limits.max_layers:
        raise _fail(LimitExceeded, "architecture_config.hidden",
                    f"the network would have {len(cfg.hidden) + 1} layers; the limit is {limits.max_layers} (LETHE_LIMITS__MAX_LAYERS)")
    fin = _same("in_features", cfg.in_features, math.prod(input_shape), f"the product of input_shape {input_shape}")
    ncls = _same("num_classes", cfg.num_classes, num_classes, "the model's num_classes")
    widths = [fin, *cfg.hidden, ncls]
    params = sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))
    done = {"in_features": fin, "num_classes": ncls, "hidden": list(cfg.hidden), "activation": cfg.activation}
    return done, Measure(params, len(widths) - 1)


def _cnn(config: dict[str, Any], input_shape: list[int], num_classes: int, limits: LimitsSettings) -> tuple[dict[str, Any], Measure]:
    cfg = CnnConfig.model_validate(config)
    _positive(cfg.channels, "channels")
    if len(input_shape) != 3:
        raise _fail(ArchitectureInvalid, "input_shape", f"cnn takes input_shape [channels, height, width], got {input_shape}")
    if len(cfg.channels) + 2 > limits.max_layers:
        raise _fail(LimitExceeded, "architecture_config.channels",
                    f"the network would have {len(cfg.channels) + 2} layers; the limit is {limits.max_layers} (LETHE_LIMITS__MAX_LAYERS)")
    c = _same("in_channels", cfg.in_channels, input_shape[0], "input_shape[0]")
    h = _same("height", cfg.height, input_shape[1], "input_shape[1]")
    w = _same("width", cfg.width, input_shape[2], "input_shape[2]")
    ncls = _same("num_classes", cfg.num_classes, num_classes, "the model's num_classes")
    params, prev = 0, c
    for out in cfg.channels:
        params += prev * out * 9 + out
        prev = out
    params += prev * 4 * cfg.hidden + cfg.hidden + cfg.hidden * ncls + ncls
    done = {"in_channels": c, "height": h, "width": w, "num_classes": ncls, "channels": list(cfg.channels), "hidden": cfg.hidden}
    return done, Measure(params, len(cfg.channels) + 2)


def _binary(cfg: LinearConfig, architecture: str, input_shape: list[int], num_classes: int) -> tuple[int, int]:
    """(in_features, 2): the homogeneous scalar-output networks separate two classes by sign."""
    fin = _same("in_features", cfg.in_features, math.prod(input_shape), f"the product of input_shape {input_shape}")
    ncls = _same("num_classes", cfg.num_classes, num_classes, "the model's num_classes")
    if ncls != 2:
        raise _fail(ArchitectureInvalid, "num_classes",
                    f"{architecture} has one scalar output whose sign is the label: num_classes must be 2, got {ncls}")
    return fin, ncls


def _linear(config: dict[str, Any], input_shape: list[int], num_classes: int, limits: LimitsSettings) -> tuple[dict[str, Any], Measure]:
    fin, ncls = _binary(LinearConfig.model_validate(config), "linear", input_shape, num_classes)
    return {"in_features": fin, "num_classes": ncls}, Measure(fin, 1)


def _two_layer_relu(config: dict[str, Any], input_shape: list[int], num_classes: int, limits: LimitsSettings) -> tuple[dict[str, Any], Measure]:
    cfg = TwoLayerReluConfig.model_validate(config)
    fin, ncls = _binary(cfg, "two_layer_relu", input_shape, num_classes)
    # the output layer is a fixed buffer (±1/√m): only the hidden layer has parameters
    return {"in_features": fin, "num_classes": ncls, "hidden": cfg.hidden}, Measure(fin * cfg.hidden, 1)


BUILTINS: dict[str, Callable[[dict[str, Any], list[int], int, LimitsSettings], tuple[dict[str, Any], Measure]]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "linear": _linear,
    "two_layer_relu": _two_layer_relu,
}


# ----------------------------------------------------------------------------- registry
def entry_point_names() -> dict[str, str]:
    """Installed entry points of ``lethe.architectures``: name -> value (nothing is loaded)."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def declared(settings: Settings) -> dict[str, str | None]:
    """Non-built-in keys: settings' declarations (key -> target) and, when enabled, entry points
    (key -> None: the probe finds them by name)."""
    out: dict[str, str | None] = {}
    if settings.architectures.entry_points:
        out.update({k: None for k in entry_point_names()})
    out.update(settings.architectures.declared)
    for k in BUILTINS:
        out.pop(k, None)
    return out


def known_keys(settings: Settings) -> list[str]:
    return sorted(set(BUILTINS) | set(declared(settings)))


# ----------------------------------------------------------------------------- probe
def probe(settings: Settings, key: str, target: str | None, config: dict[str, Any], input_shape: list[int]) -> dict[str, Any]:
    """Build a declared architecture on the meta device in a subprocess (memory cap, timeout)."""
    a = settings.architectures
    spec = json.dumps({"key": key, "target": target, "config": config, "input_shape": input_shape})
    env = {**os.environ, "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "workers.unlearning.probe", str(a.probe_memory_mb)],
            input=spec, capture_output=True, text=True, timeout=a.probe_timeout_s, env=env,
        )
    except subprocess.TimeoutExpired:
        raise _fail(LimitExceeded, "architecture",
                    f"building architecture {key!r} took longer than {a.probe_timeout_s:g} s "
                    "(LETHE_ARCHITECTURES__PROBE_TIMEOUT_S)") from None
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or "").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise _fail(ArchitectureInvalid, "architecture",
                    f"building architecture {key!r} failed (memory cap {a.probe_memory_mb} MiB, "
                    f"LETHE_ARCHITECTURES__PROBE_MEMORY_MB): {tail[0][:300]}")
    result = json.loads(lines[-1])
    if not result.get("ok"):
        raise _fail(ArchitectureInvalid, "architecture_config",
                    f"building architecture {key!r} failed (probe limits {a.probe_memory_mb} MiB, {a.probe_timeout_s:g} s): "
                    f"{result.get('error')}")
    return result


# ----------------------------------------------------------------------------- validation
def _linearize_within(linearize: str, layers: int) -> None:
    m = _LAST_K.match(linearize)
    if m and int(m.group(1)) > layers:
        raise _fail(LimitExceeded, "linearize",
                    f"linearize={linearize!r} but the network has {layers} layers with parameters")


def check_budgets(method_config: dict[str, Any], limits: LimitsSettings) -> None:
    for key, limit_name in BUDGETS.items():
        value = method_config.get(key)
        limit = getattr(limits, limit_name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > limit:
            raise _fail(LimitExceeded, f"method_config.{key}",
                        f"method_config.{key} is {value}; the limit is {limit} (LETHE_LIMITS__{limit_name.upper()})")


def validate(settings: Settings, architecture: str, config: dict[str, Any], input_shape: list[int], num_classes: int,
             linearize: str, method_config: dict[str, Any]) -> dict[str, Any]:
    """Check a registration against the registry and the limits; return the architecture config
    to store (built-ins: completed from ``input_shape`` and ``num_classes``). Raises a 422."""
    limits = settings.limits
    elements = math.prod(input_shape)
    if elements > limits.max_input_elements:
        raise _fail(LimitExceeded, "input_shape",
                    f"input_shape {input_shape} has {elements} elements; the limit is {limits.max_input_elements} "
                    "(LETHE_LIMITS__MAX_INPUT_ELEMENTS)")
    check_budgets(method_config, limits)
    if architecture in BUILTINS:
        try:
            stored, measure = BUILTINS[architecture](config, input_shape, num_classes, limits)
        except ValidationError as exc:
            errors = [{"field": "architecture_config." + ".".join(str(p) for p in e["loc"]), "message": e["msg"], "kind": e["type"]}
                      for e in exc.errors()]
            summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
            raise ArchitectureInvalid(f"Invalid {architecture} config: {summary}", errors=errors) from None
    else:
        entries = declared(settings)
        if architecture not in entries:
            shown = architecture if len(architecture) <= 80 else architecture[:77] + "..."
            raise _fail(ArchitectureUnknown, "architecture",
                        f"architecture {shown!r} is not registered; known architectures: {', '.join(known_keys(settings))}. "
                        "Architectures are registry keys (built-ins, or entries an administrator declares); "
                        "import paths are never accepted", known=known_keys(settings))
        result = probe(settings, architecture, entries[architecture], config, input_shape)
        measure = Measure(int(result["parameters"]), int(result["layers"]))
        if result.get("forward_error"):
            raise _fail(ArchitectureInvalid, "input_shape",
                        f"architecture {architecture!r} cannot take inputs of shape {input_shape}: {result['forward_error']}")
        shape = result.get("output_shape")
        if shape != [1, num_classes]:
            raise _fail(ArchitectureInvalid, "num_classes",
                        f"architecture {architecture!r} outputs shape {shape} for one input, expected [1, {num_classes}] (num_classes)")
        stored = config
    if measure.layers > limits.max_layers:
        raise _fail(LimitExceeded, "architecture_config",
                    f"the network has {measure.layers} layers with parameters; the limit is {limits.max_layers} (LETHE_LIMITS__MAX_LAYERS)")
    if measure.parameters > limits.max_parameters:
        raise _fail(LimitExceeded, "architecture_config",
                    f"the network has {measure.parameters} parameters; the limit is {limits.max_parameters} "
                    "(LETHE_LIMITS__MAX_PARAMETERS)", parameters=measure.parameters)
    _linearize_within(linearize, measure.layers)
    return stored
