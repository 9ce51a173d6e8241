"""Measure a declared architecture without memory: build it on the meta device in a short-lived
process and report its parameter count, its layers with parameters and its output shape.

    python -m workers.unlearning.probe MEMORY_MB  < {"key", "target"?, "config", "input_shape"}

``target`` (``package.module:function``) comes from the server's settings; without it ``key`` is
looked up in the registry (entry points of ``lethe.architectures``). The process caps its own
address space at ``MEMORY_MB`` before importing torch; the caller adds a timeout. One JSON object
is printed: ``{"ok": true, "parameters", "layers", "output_shape"}`` or ``{"ok": false, "error"}``.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any


def _cap(memory_mb: int) -> None:
    if memory_mb > 0:
        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from torch import nn

    from workers.unlearning.linearized import _param_modules
    from workers.unlearning.networks import build_network, declare_architecture, resolve_architecture

    key, target = str(spec["key"]), spec.get("target")
    if target:
        declare_architecture(key, str(target))
    resolve_architecture(key)  # unknown -> ConfigError
    with torch.device("meta"):
        net = build_network(key, spec.get("config") or {})
        params = sum(p.numel() for p in net.parameters())
        if isinstance(net, nn.Sequential):
            layers = sum(1 for c in net.children() if any(True for _ in c.parameters()))
        else:
            layers = len(_param_modules(net))
        try:
            out = net(torch.empty(1, *[int(d) for d in spec["input_shape"]]))
        except Exception as exc:  # noqa: BLE001 - reported to the caller as a shape problem
            return {"ok": True, "parameters": int(params), "layers": int(layers), "output_shape": None,
                    "forward_error": f"{type(exc).__name__}: {exc}"[:500]}
    shape = list(out.shape) if isinstance(out, torch.Tensor) else None
    return {"ok": True, "parameters": int(params), "layers": int(layers), "output_shape": shape}


def main(argv: list[str]) -> int:
    _cap(int(argv[1]) if len(argv) > 1 else 0)
    spec = json.loads(sys.stdin.read())
    out, sys.stdout = sys.stdout, sys.stderr  # whatever the builder prints does not garble the answer
    try:
        result = measure(spec)
    except MemoryError:
        result = {"ok": False, "error": "building the network needed more memory than the probe's cap"}
    except Exception as exc:  # noqa: BLE001 - any failure of the user's builder is a 422 upstream
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:1000]}
    out.write("\n" + json.dumps(result) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
