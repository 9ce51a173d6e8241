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
    """P(score(pos) > score(neg)) + ½P(tie): the Mann–Whitney AUC, with ties handled."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    scores = torch.cat([positive, negative]).to(torch.float64)
    order = torch.argsort(scores)
    ranks = torch.empty_like(scores)
    sorted_scores = scores[order]
    # average ranks for ties
    i = 0
    n = len(scores)
    r = torch.arange(1, n + 1, dtype=torch.float64)
    while i < n:
        j = i
        while j + 1 < n and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        r[i : j + 1] = r[i : j + 1].mean()
        i = j + 1
    ranks[order] = r
    n_pos = len(positive)
    u = float(ranks[:n_pos].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * len(negative))


def membership_inference_auc(model: MixedLinearModel, forget: TensorSource, eval_: TensorSource, config=None) -> float:
    """AUC of a loss-threshold attack separating ``forget`` (members?) from ``eval`` (never
    seen): a lower loss means "member". 0.5 means the model treats them alike."""
    return auc(-per_sample_loss(model, forget), -per_sample_loss(model, eval_))
