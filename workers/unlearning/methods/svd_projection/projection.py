"""Class forgetting by SVD projection (Kodge, Saha, Roy, TMLR 2024; DESIGN §14.3), the math only.

For every ``Linear`` and ``Conv2d`` layer, the inputs it sees on a retain sample (R_r) and on the
forgotten classes' samples (R_f) span the directions each uses. With R = U Σ Vᵀ and the normalised
energies σ̃_i = σ_i² / Σ_j σ_j², the soft projector of R at scale α is

    M(α) = U diag(λ(α)) Uᵀ,   λ_i(α) = α·σ̃_i / ((α − 1)·σ̃_i + 1)

(α = 1: λ_i = σ̃_i, energy weighting; α → ∞: λ_i → 1 on the span, the hard projector). The
directions the forgotten classes use and the retained ones do not are ``M_f − M_r·M_f``; the
update removes them from the weights: ``W ← W·(I − M_f + M_r·M_f)`` (conv weights flattened to
(out, in·kh·kw), biases unchanged). BatchNorm running statistics are recomputed on the retain
sample afterwards (the inputs of every later layer moved).

A layer's representations are kept as their Gram matrix R·Rᵀ (float64, d × d): RRᵀ = U Σ² Uᵀ
gives U and σ² directly, every patch a conv layer sees can be used, and memory is set by the
layer's input width, not by the sample. Conv patches are ``F.unfold`` with the layer's kernel,
stride, padding and dilation, so non-square inputs are cropped correctly in height and width;
at most ``max_patches`` per layer are drawn at random, spread over the batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workers.unlearning.errors import ConfigError

Projected = (nn.Linear, nn.Conv2d)


def scaled_energies(eigenvalues: torch.Tensor, alpha: float) -> torch.Tensor:
    """λ_i(α) from the eigenvalues σ_i² of R·Rᵀ (negative rounding noise counts as 0)."""
    e = eigenvalues.clamp(min=0)
    total = e.sum()
    if not bool(total > 0):
        return torch.zeros_like(e)
    s = e / total
    return alpha * s / ((alpha - 1.0) * s + 1.0)


def soft_projector(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """M(α) = U diag(λ(α)) Uᵀ from the Gram matrix R·Rᵀ = U Σ² Uᵀ (float64, symmetric)."""
    g = 0.5 * (gram + gram.T)
    evals, evecs = torch.linalg.eigh(g)
    # eigenvalues below the rounding level of the largest are noise, not directions
    evals = torch.where(evals > evals.max().clamp(min=0) * g.shape[0] * torch.finfo(g.dtype).eps, evals, torch.zeros_like(evals))
    lam = scaled_energies(evals, alpha)
    return (evecs * lam) @ evecs.T


def update_matrix(gram_retain: torch.Tensor, gram_forget: torch.Tensor, alpha_r: float, alpha_f: float) -> torch.Tensor:
    """P = I − M_f + M_r·M_f: a layer's weights become W·P."""
    m_r = soft_projector(gram_retain, alpha_r)
    m_f = soft_projector(gram_forget, alpha_f)
    eye = torch.eye(m_f.shape[0], dtype=m_f.dtype, device=m_f.device)
    return eye - m_f + m_r @ m_f


def conv_patches(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Every k×k input patch the conv layer multiplies by its weights, as rows (n·L, in·kh·kw),
    in the order of ``layer.weight.reshape(out, -1)``: ``W_flat @ patch`` is the output there."""
    if layer.groups != 1:
        raise ConfigError(f"grouped convolutions (groups={layer.groups}) are not supported by svd_projection")
    padding = layer.padding
    if isinstance(padding, str) or layer.padding_mode != "zeros":
        x = _pad(layer, x)
        padding = 0
    cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=padding, stride=layer.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _pad(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The padding the layer applies itself ('same'/'valid', or a non-zero padding mode)."""
    if layer.padding == "valid":
        return x
    if layer.padding == "same":
        pads: list[int] = []
        for k, d in reversed(list(zip(layer.kernel_size, layer.dilation))):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
    else:
        pads = [p for p in reversed(layer.padding) for _ in range(2)]
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    return F.pad(x, pads, mode=mode)


def projected_layers(net: nn.Module) -> dict[str, nn.Module]:
    """The layers the method projects, by name: Linear, and Conv2d with groups = 1 (a grouped
    convolution's weights do not act on one flattened patch; it is left as it is)."""
    return {name: m for name, m in net.named_modules()
            if isinstance(m, Projected) and getattr(m, "groups", 1) == 1}


@dataclass
class LayerGrams:
    """R·Rᵀ per projected layer, over the inputs that layer saw on one sample."""

    grams: dict[str, torch.Tensor]
    rows: dict[str, int]


def layer_grams(net: nn.Module, batches: Iterable[torch.Tensor], *, n_samples: int, max_patches: int,
                device: torch.device, seed: int = 0) -> LayerGrams:
    """The Gram matrix of every projected layer's inputs over ``batches`` (``n_samples`` inputs
    in all), from one pass of the unchanged network. A conv layer keeps at most ``max_patches``
    patches, drawn at random in proportion to each batch's size."""
    layers = projected_layers(net)
    grams: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = dict.fromkeys(layers, 0)
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def hook(name: str, layer: nn.Module):
        def pre(_module, args):
            x = args[0].detach()
            if isinstance(layer, nn.Conv2d):
                r = conv_patches(layer, x)
                quota = math.ceil(max_patches * x.shape[0] / max(n_samples, 1))
                quota = min(quota, max_patches - rows[name], r.shape[0])
                if quota < r.shape[0]:
                    r = r[torch.randperm(r.shape[0], generator=gen)[:quota].to(r.device)]
            else:
                r = x.reshape(-1, x.shape[-1])
            r = r.to(torch.float64)
            g = r.T @ r
            grams[name] = g if name not in grams else grams[name] + g
            rows[name] += int(r.shape[0])
        return pre

    handles = [m.register_forward_pre_hook(hook(name, m)) for name, m in layers.items()]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            for x in batches:
                net(x.to(device))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return LayerGrams(grams, rows)


def project(net: nn.Module, retain: LayerGrams, forget: LayerGrams, alpha_r: float, alpha_f: float) -> dict[str, float]:
    """W ← W·(I − M_f + M_r·M_f) in every projected layer (in place; biases unchanged).
    Returns ‖ΔW‖/‖W‖ per layer (how much each layer moved)."""
    moved: dict[str, float] = {}
    with torch.no_grad():
        for name, layer in projected_layers(net).items():
            if name not in forget.grams or name not in retain.grams:
                continue  # a layer the forward pass never reached
            p = update_matrix(retain.grams[name], forget.grams[name], alpha_r, alpha_f)
            w = layer.weight
            flat = w.reshape(w.shape[0], -1).to(torch.float64)
            new = flat @ p.to(flat.device)
            moved[name] = float((new - flat).norm() / flat.norm().clamp(min=1e-300))
            w.copy_(new.reshape(w.shape).to(w.dtype))
    return moved


def recompute_batchnorm(net: nn.Module, batches: Iterable[torch.Tensor], device: torch.device) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them on ``batches``: each
    batch weighs by its size (momentum n_b / n_seen), so the running mean is the sample's mean,
    not a momentum blend. Returns the number of layers."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    saved = {m: m.momentum for m in norms}
    was_training = net.training
    net.eval()
    try:
        for m in norms:
            m.reset_running_stats()
            m.train()
        seen = 0
        with torch.no_grad():
            for x in batches:
                seen += x.shape[0]
                for m in norms:
                    m.momentum = x.shape[0] / seen
                net(x.to(device))
    finally:
        for m, momentum in saved.items():
            m.momentum = momentum
        net.train(was_training)
    return len(norms)


def batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [x[i : i + size] for i in range(0, x.shape[0], size)]


def per_class_sample(y: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of at most ``per_class`` samples of every label in ``y`` (seeded, sorted)."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().reshape(-1)
        picks.append(idx[torch.randperm(idx.numel(), generator=gen)[:per_class]])
    return torch.sort(torch.cat(picks)).values if picks else torch.zeros(0, dtype=torch.long)


@dataclass
class Representations:
    """The Gram matrices of the retain and forget samples, from the network before projection:
    every (α_r, α_f) candidate of a grid search projects from these, without another pass."""

    retain: LayerGrams
    forget: LayerGrams
    original: dict[str, torch.Tensor]  # the state before projection, to try again from

    @classmethod
    def collect(cls, net: nn.Module, retain_x: torch.Tensor, forget_x: torch.Tensor, *, max_patches: int,
                batch_size: int, device: torch.device, seed: int = 0) -> "Representations":
        if retain_x.shape[0] == 0 or forget_x.shape[0] == 0:
            raise ConfigError("svd_projection needs samples of the retained classes and of the forgotten ones")
        retain = layer_grams(net, batches(retain_x, batch_size), n_samples=retain_x.shape[0], max_patches=max_patches,
                             device=device, seed=seed)
        forget = layer_grams(net, batches(forget_x, batch_size), n_samples=forget_x.shape[0], max_patches=max_patches,
                             device=device, seed=seed + 1)
        return cls(retain, forget, {k: v.detach().clone() for k, v in net.state_dict().items()})

    def apply(self, net: nn.Module, retain_x: torch.Tensor, alpha_r: float, alpha_f: float, *, batch_size: int,
              device: torch.device) -> dict[str, float]:
        """Project the original weights at (α_r, α_f), then re-estimate BatchNorm on ``retain_x``."""
        net.load_state_dict(self.original)
        moved = project(net, self.retain, self.forget, alpha_r, alpha_f)
        recompute_batchnorm(net, batches(retain_x, batch_size), device)
        return moved


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Unmasked top-1 accuracy (the network's own logits, every class allowed)."""
    if x.shape[0] == 0:
        return float("nan")
    was_training = net.training
    net.eval()
    correct = 0
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                out = net(x[i : i + batch_size].to(device))
                correct += int((out.argmax(dim=1).cpu() == y[i : i + batch_size]).sum())
    finally:
        net.train(was_training)
    return correct / x.shape[0]


def grid_search(net: nn.Module, reps: Representations, retain: tuple[torch.Tensor, torch.Tensor],
                forget: tuple[torch.Tensor, torch.Tensor], grid_r: Iterable[float], grid_f: Iterable[float], *,
                max_forget_accuracy: float, batch_size: int, device: torch.device) -> tuple[float, float, list[dict]]:
    """The (α_r, α_f) that keeps the most retain-sample accuracy among those whose forget-sample
    accuracy is at most ``max_forget_accuracy`` (else the lowest forget accuracy). The network is
    left at the original weights; returns the pair and every candidate's figures."""
    table = []
    for a_r in grid_r:
        for a_f in grid_f:
            reps.apply(net, retain[0], a_r, a_f, batch_size=batch_size, device=device)
            table.append({"alpha_r": float(a_r), "alpha_f": float(a_f),
                          "retain_accuracy": accuracy(net, *retain, batch_size, device),
                          "forget_accuracy": accuracy(net, *forget, batch_size, device)})
    net.load_state_dict(reps.original)
    if not table:
        raise ConfigError("the α grid is empty")
    ok = [t for t in table if t["forget_accuracy"] <= max_forget_accuracy]
    best = max(ok, key=lambda t: t["retain_accuracy"]) if ok else min(table, key=lambda t: (t["forget_accuracy"], -t["retain_accuracy"]))
    return best["alpha_r"], best["alpha_f"], table
