"""Tiny float64 problems and an independent dense oracle (explicit Jacobian, dense solves)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from workers.unlearning import MixedLinearModel, TensorSource, get_method


@dataclass
class Oracle:
    """Everything computed densely from an explicitly materialised Jacobian."""

    model: MixedLinearModel
    x: torch.Tensor
    y: torch.Tensor
    mu: float
    kappa: float

    def jacobian_and_f0(self, idx=None):
        m = self.model
        x = self.x if idx is None else self.x[idx]
        names = list(m.user)  # head-relative linearised names, library order
        core = {n: p.detach().clone() for n, p in m.head.named_parameters()}
        shapes = [core[n].shape for n in names]
        sizes = [core[n].numel() for n in names]
        feats = x.to(torch.float64) if m.prefix is None else m.prefix(x.to(torch.float64)).detach()

        def f(flat):
            parts = torch.split(flat, sizes)
            params = dict(core)
            for n, s, p in zip(names, shapes, parts, strict=True):
                params[n] = p.reshape(s)
            return functional_call(m.head, params, (feats,)).reshape(-1)

        w_c = torch.cat([core[n].reshape(-1) for n in names])
        J = torch.autograd.functional.jacobian(f, w_c)  # (N*C, P)
        f0 = f(w_c).detach()
        return J, f0

    def targets(self, idx=None):
        y = self.y if idx is None else self.y[idx]
        C = self.model.core_output(self.x[:1]).shape[1]
        t = torch.zeros(len(y), C, dtype=torch.float64)
        t[torch.arange(len(y)), y] = self.kappa
        return t.reshape(-1)

    def hessian(self, idx=None):
        J, _ = self.jacobian_and_f0(idx)
        n = len(self.y) if idx is None else len(idx)
        return J.T @ J / n + self.mu * torch.eye(J.shape[1], dtype=torch.float64)

    def loss(self, w, idx=None):
        """L_D(w) written independently of the library, from the explicit Jacobian."""
        J, f0 = self.jacobian_and_f0(idx)
        n = len(self.y) if idx is None else len(idx)
        r = f0 + J @ w - self.targets(idx)
        return 0.5 * (r @ r) / n + 0.5 * self.mu * (w @ w)

    def solve(self, idx=None):
        """argmin L_D: (JᵀJ/N + μI) w = −Jᵀ(f0 − t)/N, dense float64."""
        J, f0 = self.jacobian_and_f0(idx)
        n = len(self.y) if idx is None else len(idx)
        H = J.T @ J / n + self.mu * torch.eye(J.shape[1], dtype=torch.float64)
        b = -J.T @ (f0 - self.targets(idx)) / n
        return torch.linalg.solve(H, b)


def tiny_problem(n=24, d=3, hidden=4, classes=3, linearize="all", seed=0, mu=1e-2, kappa=1.5, subjects=6, arch="mlp", activation="tanh"):
    g = torch.Generator().manual_seed(seed)
    if arch == "cnn":  # d x d single-channel images
        x = torch.randn(n, 1, d, d, generator=g, dtype=torch.float64)
        config = {"in_channels": 1, "height": d, "width": d, "num_classes": classes, "channels": [2], "hidden": hidden}
    else:
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        hid = hidden if isinstance(hidden, list) else [hidden]
        config = {"in_features": d, "hidden": hid, "num_classes": classes, "activation": activation}
    y = torch.randint(0, classes, (n,), generator=g)
    model = MixedLinearModel.build(arch, config, linearize, kappa, device="cpu", seed=seed)
    method = get_method("mixed_linear")
    cfg = method.config_cls(l2=mu, target_scale=kappa, tol=1e-12, max_iter=5000, core_epochs=3, chunk_size=7, device="cpu")
    method.train_core(model, TensorSource(x, y, chunk_size=7), cfg)
    subj = torch.arange(n) % subjects
    return model, method, cfg, x, y, subj, Oracle(model, x, y, mu, kappa)

