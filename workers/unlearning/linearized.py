"""The mixed-linear model (DESIGN §6.1).

``f_ML(x; w_u) = f(x; w_c) + J_P(x) · w_u`` with ``J_P = ∂f/∂w_P`` at the core weights ``w_c``.
One forward-mode pass (``torch.func.jvp``) gives both terms.

With ``linearize="last:K"`` on an ``nn.Sequential`` network, the network is split into a frozen
*prefix* and a *head* holding the last K layers that have parameters: the prefix's outputs (the
inputs to the linearised layers) are computed once per data set and every later pass runs through
the head only. For other modules ``last:K`` still linearises just those K layers' parameters, but
every pass goes through the whole network (no feature cache).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from workers.unlearning.errors import ConfigError
from workers.unlearning.networks import build_network

_LAST_K = re.compile(r"^last:(\d+)$")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for, but this worker has no CUDA device; use 'cpu' or 'auto'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} was asked for, but this worker has {torch.cuda.device_count()} CUDA device(s)")
    return dev


DTYPES = ("auto", "float64", "float32", "mixed")


def compute_dtypes(device: torch.device, dtype: str | torch.dtype = "auto") -> tuple[torch.dtype, torch.dtype]:
    """(prefix dtype, head dtype): the frozen prefix (feature extraction) runs in the first, the
    linearised head, the user weights and everything the certificate rests on in the second.

    ``float64``: both float64 (the certificate is exact). ``float32``: both float32 (fast, but the
    gradient at float32 user weights floors near 1e-7, so the certified bound misses the KL
    gate). ``mixed``: a float32 prefix and a float64 head: the features are whatever the float32
    prefix computes (a fixed function of the input), and the Gram sums, the Newton step, the
    gradient/residual and the bound are float64 on them, so the bound still certifies.
    ``auto``: float64 on the CPU, ``mixed`` on CUDA."""
    if isinstance(dtype, torch.dtype):
        return dtype, dtype
    if dtype == "auto":
        dtype = "float64" if device.type == "cpu" else "mixed"
    if dtype == "mixed":
        return torch.float32, torch.float64
    if dtype in ("float64", "float32"):
        t = getattr(torch, dtype)
        return t, t
    raise ConfigError(f"dtype must be one of {', '.join(repr(d) for d in DTYPES)}, got {dtype!r}")


def _param_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if any(True for _ in m.parameters(recurse=False))]


class MixedLinearModel(nn.Module):
    """A network linearised around its core weights, plus user weights ``w_u`` (initially 0)."""

    def __init__(
        self,
        network: nn.Module,
        linearize: str = "all",
        target_scale: float = 1.0,
        *,
        architecture: str | None = None,
        architecture_config: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "auto",
    ) -> None:
        super().__init__()
        self.device_ = resolve_device(device)
        self.precision = dtype  # as asked ("auto", "mixed", ...): a rebuild on this device gets the same dtypes
        self.prefix_dtype_, self.dtype_ = compute_dtypes(self.device_, dtype)
        self.network = network.to(device=self.device_, dtype=self.prefix_dtype_)
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.linearize = linearize
        self.target_scale = float(target_scale)
        self.architecture = architecture
        self.architecture_config = dict(architecture_config or {})
        self._split()
        self.user: dict[str, torch.Tensor] = {n: torch.zeros_like(p) for n, p in self._lin_core().items()}
        self.fitted_gram = None  # GramState of the last solve's data set (affine heads), private

    # -- construction -------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        architecture: str,
        architecture_config: dict[str, Any] | None = None,
        linearize: str = "all",
        target_scale: float = 1.0,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "auto",
        seed: int | None = 0,
        architectures=None,
    ) -> "MixedLinearModel":
        """Build a registered network (see :mod:`workers.unlearning.networks`; ``architectures``
        adds builders passed explicitly), initialised from ``seed``."""
        device = resolve_device(device)  # an unavailable device fails here, before anything is built
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = build_network(architecture, architecture_config, architectures=architectures)
        else:
            net = build_network(architecture, architecture_config, architectures=architectures)
        return cls(net, linearize, target_scale, architecture=architecture, architecture_config=architecture_config, device=device, dtype=dtype)

    def _split(self) -> None:
        net = self.network
        id_to_name = {id(p): n for n, p in net.named_parameters()}
        if self.linearize == "all":
            self.prefix: nn.Module | None = None
            self.head: nn.Module = net
            lin_ids = {id(p) for p in net.parameters()}
        else:
            m = _LAST_K.match(self.linearize)
            if not m or int(m.group(1)) < 1:
                raise ConfigError(f"linearize must be 'all' or 'last:K' with K >= 1, got {self.linearize!r}")
            k = int(m.group(1))
            if isinstance(net, nn.Sequential):
                children = list(net.children())
                owners = [i for i, c in enumerate(children) if any(True for _ in c.parameters())]
                if k > len(owners):
                    raise ConfigError(f"linearize={self.linearize!r} but the network has {len(owners)} layers with parameters")
                split = owners[-k]
                self.prefix = nn.Sequential(*children[:split]) if split > 0 else None
                self.head = nn.Sequential(*children[split:])
                lin_ids = {id(p) for p in self.head.parameters()}
            else:
                mods = _param_modules(net)
                if k > len(mods):
                    raise ConfigError(f"linearize={self.linearize!r} but the network has {len(mods)} layers with parameters")
                self.prefix, self.head = None, net
                lin_ids = {id(p) for _, mod in mods[-k:] for p in mod.parameters(recurse=False)}
        # head-relative name -> network name, for every head parameter and the linearised subset
        self._head_names = {n: id_to_name[id(p)] for n, p in self.head.named_parameters()}
        self._lin = [n for n, p in self.head.named_parameters() if id(p) in lin_ids]
        # the head is one nn.Linear whose parameters are all linearised: f_ML = (W_c + W_u) φ + (b_c + b_u)
        mods = [m for m in self.head.modules() if not isinstance(m, (nn.Sequential, nn.Identity, nn.Flatten))]
        self._affine = mods[0] if (len(mods) == 1 and isinstance(mods[0], nn.Linear)
                                   and set(self._lin) == {n for n, _ in self.head.named_parameters()}) else None
        self._cast()

    def _cast(self) -> None:
        """The prefix in ``prefix_dtype_``, the head (all of the network when there is no prefix)
        in ``dtype_``; parameters stay shared with ``self.network``."""
        if self.prefix is not None:
            self.prefix.to(dtype=self.prefix_dtype_)
        self.head.to(dtype=self.dtype_)

    @property
    def keeps_features(self) -> bool:
        """A prefix does not reproduce its outputs bit for bit across batch shapes, in float32 nor
        in float64 (BLAS picks kernels and blockings by shape; a float64 difference is ~u·‖W‖‖x‖
        per layer, far above ~u·‖φ‖ where the features come out of a cancellation): its
        features are computed once per sample and kept with the Gram sums (``GramState.F``),
        so a downdate subtracts exactly the rows that were added."""
        return self.prefix is not None

    @property
    def train_dtype(self) -> torch.dtype:
        """The dtype the whole network is trained in (the core): the prefix's."""
        return self.prefix_dtype_ if self.prefix is not None else self.dtype_

    # -- parameters -----------------------------------------------------------------------
    def _lin_core(self) -> dict[str, torch.Tensor]:
        params = dict(self.head.named_parameters())
        return {n: params[n] for n in self._lin}

    def user_parameters(self) -> dict[str, torch.Tensor]:
        """User weights keyed by the network's own parameter names."""
        return {self._head_names[n]: t for n, t in self.user.items()}

    def set_user_parameters(self, tensors: dict[str, torch.Tensor]) -> None:
        by_net = {v: k for k, v in self._head_names.items()}
        new = {}
        for net_name, t in tensors.items():
            if net_name not in by_net or by_net[net_name] not in self.user:
                raise ConfigError(f"{net_name!r} is not a linearised parameter")
            new[by_net[net_name]] = t.to(device=self.device_, dtype=self.dtype_).reshape(self.user[by_net[net_name]].shape).clone()
        missing = set(self.user) - set(new)
        if missing:
            raise ConfigError(f"missing user tensors: {sorted(self._head_names[m] for m in missing)}")
        self.user = {n: new[n] for n in self._lin}

    def zero_user(self) -> None:
        self.user = {n: torch.zeros_like(t) for n, t in self.user.items()}

    @property
    def num_user_parameters(self) -> int:
        return sum(t.numel() for t in self.user.values())

    # -- flat vectors (for CG) ----------------------------------------------------------------
    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[n].reshape(-1).to(torch.float64) for n in self._lin])

    def unflatten(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for n in self._lin:
            ref = self.user[n]
            out[n] = vec[i : i + ref.numel()].reshape(ref.shape).to(self.dtype_)
            i += ref.numel()
        return out

    # -- passes ----------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs to the head (the linearised layers); identity when everything is linearised."""
        if self.prefix is None:
            return x.to(device=self.device_, dtype=self.dtype_)
        with torch.no_grad():  # a float32 prefix (mixed) hands float64 features to the head
            return self.prefix(x.to(device=self.device_, dtype=self.prefix_dtype_)).to(self.dtype_)

    def _head_fn(self, feats: torch.Tensor):
        frozen = {n: p for n, p in self.head.named_parameters() if n not in self.user}
        buffers = dict(self.head.named_buffers())

        def f(lin: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(self.head, {**frozen, **buffers, **lin}, (feats,))

        return f

    def head_jvp(self, feats: torch.Tensor, v: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(x; w_c), J v) from one forward-mode pass over the head."""
        return jvp(self._head_fn(feats), (self._lin_core(),), (v,))

    def head_vjp(self, feats: torch.Tensor, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """Jᵀ u."""
        _, fn = vjp(self._head_fn(feats), self._lin_core())
        return fn(u)[0]

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        lin = self._affine
        if lin is not None:  # exactly f(x; w_c) + J w_u for an affine head, without a forward-mode pass
            names = {id(p): n for n, p in self.head.named_parameters()}
            w = lin.weight + self.user[names[id(lin.weight)]]
            b = None if lin.bias is None else lin.bias + self.user[names[id(lin.bias)]]
            with torch.no_grad():
                return nn.functional.linear(feats, w, b)
        out, jv = self.head_jvp(feats, self.user)
        return out + jv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(self.features(x))

    def core_output(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.head(self.features(x))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.forward(x).argmax(dim=1)

    def targets(self, y: torch.Tensor, num_outputs: int) -> torch.Tensor:
        t = torch.zeros(y.shape[0], num_outputs, device=self.device_, dtype=self.dtype_)
        t[torch.arange(y.shape[0]), y.to(self.device_)] = self.target_scale
        return t

    def parameters_iter(self) -> Iterator[torch.Tensor]:  # pragma: no cover - convenience
        yield from self.user.values()
