"""Cross-entropy training of a network on the ``core`` split (never user data), shared by every
method that trains what comes before the user-data part (a core network, a feature extractor)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from workers.unlearning.data import TensorSource


def train_cross_entropy(net: nn.Module, core: TensorSource, *, epochs: int, lr: float, batch_size: int, seed: int,
                        device: torch.device, dtype: torch.dtype, progress: Callable[[dict], None] | None = None) -> dict:
    """Adam on cross-entropy, deterministic given ``seed``; parameters are frozen again afterwards."""
    for p in net.parameters():
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    n = len(core)
    start = time.perf_counter()
    last = 0.0
    try:
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            for i in range(0, n, batch_size):
                idx = perm[i : i + batch_size]
                x = core.x[idx].to(device, dtype)
                y = core.y[idx].to(device)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(x), y)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            now = time.monotonic()
            if progress is not None and now - last >= 0.25:
                last = now
                progress({"phase": "core", "epoch": epoch + 1, "loss": total / n})
    finally:
        for p in net.parameters():
            p.requires_grad_(False)
    return {"epochs": epochs, "seconds": time.perf_counter() - start}
