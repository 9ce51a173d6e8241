"""Evaluation recorded with every version (DESIGN §6.7)."""

from __future__ import annotations

import torch

from workers.unlearning.data import TensorSource
from workers.unlearning.linearized import MixedLinearModel


def per_sample_loss(model: MixedLinearModel, source: TensorSource) -> torch.Tensor:
    """0.5‖f_ML(x) − κ·onehot(y)‖² per sample: the loss of §6.2 without the regulariser."""
    out = []
    with torch.no_grad():
        for x, y in source:
            f = model(x)
            r = f - model.targets(y, f.shape[1])
            out.append(0.5 * (r.to(torch.float64) ** 2).sum(dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def evaluate(model: MixedLinearModel, source: TensorSource, config=None) -> dict:
    """Accuracy and mean loss of the mixed-linear model on ``source``."""
    if len(source) == 0:
        return {"accuracy": None, "loss": None, "n": 0}
    correct = 0
    losses = []
    with torch.no_grad():
        for x, y in source:
            f = model(x)
            correct += int((f.argmax(dim=1).cpu() == y).sum())
            r = f - model.targets(y, f.shape[1])
            losses.append(0.5 * (r.to(torch.float64) ** 2).sum(dim=1).cpu())
    loss = float(torch.cat(losses).mean())
    return {"accuracy": correct / len(source), "loss": loss, "n": len(source)}


def auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(score(pos) > score(neg)) + ½P(tie): the Mann–Whitney AUC, tied scores sharing their
    average rank (vectorised: a Python loop over the samples cost more than a GPU forget)."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    scores = torch.cat([positive, negative]).to(torch.float64).cpu()
    _, group, counts = torch.unique(scores, return_inverse=True, return_counts=True)  # groups in ascending order
    last = torch.cumsum(counts, 0).to(torch.float64)  # 1-based rank of each group's last member
    ranks = (last - (counts - 1) / 2.0)[group]  # the group's average rank
    n_pos = len(positive)
    u = float(ranks[:n_pos].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * len(negative))


def membership_inference_auc(model: MixedLinearModel, forget: TensorSource, eval_: TensorSource, config=None) -> float:
    """AUC of a loss-threshold attack separating ``forget`` (members?) from ``eval`` (never
    seen): a lower loss means "member". 0.5 means the model treats them alike."""
    return auc(-per_sample_loss(model, forget), -per_sample_loss(model, eval_))
