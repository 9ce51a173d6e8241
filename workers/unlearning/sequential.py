"""Explicit Jacobian products for linearised heads made of ``nn.Linear`` and elementwise
activations (the built-in MLP, and the last layers of most classifiers).

``torch.func.jvp`` followed by ``torch.func.vjp`` runs the primal network three times per chunk
(forward-mode primal, reverse-mode primal, backward). Here the primal pass is run once per chunk
and its by-products (each Linear's input, each activation's derivative) are kept; afterwards

    J v   = for each layer:  ṫ ← ṫ Wᵀ + h Vᵀ + c   (Linear),   ṫ ← σ'(z) ⊙ ṫ   (activation)
    Jᵀ u  = the usual backpropagation of u through the same records

are plain matrix products: one CG iteration costs about one forward+backward pass. The products
are the same functions as the generic path (a test checks it to 1e-12); they are used only when
every module of the head is one of ``SUPPORTED`` and every head parameter is linearised.
The same records give the exact diagonal of ``JᵀJ/N`` (the Jacobi preconditioner) with one
backward per output.
"""

from __future__ import annotations

import torch
from torch import nn

SUPPORTED = (nn.Linear, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Flatten, nn.Identity)


def applies(model) -> bool:
    head = model.head
    if not isinstance(head, nn.Sequential):
        return False
    layers = list(head.children())
    if not layers or not all(type(m) in SUPPORTED for m in layers):
        return False
    if not any(isinstance(m, nn.Linear) for m in layers):
        return False
    names = {n for n, _ in head.named_parameters()}
    return names == set(model.user)


class SequentialProducts:
    """J v and Jᵀ u of a Linear/activation head from one primal pass per chunk."""

    def __init__(self, model, dtype: torch.dtype | None = None) -> None:
        """``dtype`` runs the passes in another precision than the model's (float32 passes of a
        float64 model: the weights are cast once here; callers accumulate in float64)."""
        self.model = model
        self.layers = list(model.head.children())
        self.linear_idx = [i for i, m in enumerate(self.layers) if isinstance(m, nn.Linear)]
        self.first_linear = self.linear_idx[0]
        self.dtype = dtype or model.dtype_
        self.W = {i: self.layers[i].weight.detach().to(self.dtype) for i in self.linear_idx}
        self.Wt = {i: w.T.contiguous() for i, w in self.W.items()}
        self.b = {i: (self.layers[i].bias.detach().to(self.dtype) if self.layers[i].bias is not None else None) for i in self.linear_idx}

    # records: list aligned with layers: Linear -> its input (2-D); activation -> σ'(z); else None
    def primal(self, feats: torch.Tensor) -> tuple[torch.Tensor, list] | None:
        """(f(x; w_c), records), or None when an input to a Linear is not 2-D (use the generic path)."""
        h = feats.to(self.dtype)
        records: list = []
        with torch.no_grad():
            for i, m in enumerate(self.layers):
                if isinstance(m, nn.Linear):
                    if h.ndim != 2:
                        return None
                    records.append(h)
                    h = torch.addmm(self.b[i], h, self.Wt[i]) if self.b[i] is not None else h @ self.Wt[i]
                elif isinstance(m, nn.ReLU):
                    records.append((h > 0).to(h.dtype) if i > self.first_linear else None)
                    h = torch.relu(h)
                elif isinstance(m, nn.Tanh):
                    h = torch.tanh(h)
                    records.append(1 - h * h if i > self.first_linear else None)
                elif isinstance(m, nn.Sigmoid):
                    h = torch.sigmoid(h)
                    records.append(h * (1 - h) if i > self.first_linear else None)
                elif isinstance(m, nn.Flatten):
                    records.append(None)
                    h = m(h)
                else:  # Identity
                    records.append(None)
        return h, records

    def jvp(self, records: list, v: dict[str, torch.Tensor]) -> torch.Tensor:
        t = None
        for i, m in enumerate(self.layers):
            if i < self.first_linear:
                continue
            if isinstance(m, nn.Linear):
                h, vw = records[i], v[f"{i}.weight"]
                new = torch.addmm(v[f"{i}.bias"], h, vw.T) if m.bias is not None else h @ vw.T
                t = new if t is None else new.addmm_(t, self.Wt[i])
            elif records[i] is not None:
                t = t.mul_(records[i])  # t is always a fresh product here
            elif isinstance(m, nn.Flatten):
                t = m(t)
        return t

    def vjp(self, records: list, u: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        fresh = False  # u is the caller's tensor until the first product replaces it
        for i in range(len(self.layers) - 1, self.first_linear - 1, -1):
            m = self.layers[i]
            if isinstance(m, nn.Linear):
                out[f"{i}.weight"] = u.T @ records[i]
                if m.bias is not None:
                    out[f"{i}.bias"] = u.sum(0)
                if i > self.first_linear:
                    u, fresh = u @ self.W[i], True
            elif records[i] is not None:
                u = u.mul_(records[i]) if fresh else u * records[i]
        return out

    def diag_ggn(self, records: list) -> dict[str, torch.Tensor]:
        """Σ_i Σ_c (∂f_c(x_i)/∂w)² for every linearised weight: one backward per output c."""
        n = records[self.first_linear].shape[0]
        num_out = self.layers[self.linear_idx[-1]].out_features
        acc: dict[str, torch.Tensor] = {}
        for c in range(num_out):
            u = torch.zeros(n, num_out, dtype=records[self.first_linear].dtype, device=records[self.first_linear].device)
            u[:, c] = 1.0
            for i in range(len(self.layers) - 1, self.first_linear - 1, -1):
                m = self.layers[i]
                if isinstance(m, nn.Linear):
                    u2 = u * u
                    w = (u2.T @ (records[i] * records[i])).to(torch.float64)
                    acc[f"{i}.weight"] = acc.get(f"{i}.weight", 0) + w
                    if m.bias is not None:
                        acc[f"{i}.bias"] = acc.get(f"{i}.bias", 0) + u2.sum(0).to(torch.float64)
                    if i > self.first_linear:
                        u = u @ self.W[i]
                elif records[i] is not None:
                    u = u * records[i]
        return acc
