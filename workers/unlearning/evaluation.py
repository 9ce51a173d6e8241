"""Evaluation recorded with every version (DESIGN §6.7)."""

from __future__ import annotations

import torch

from workers.unlearning.data import TensorSource
from workers.unlearning.linearized import MixedLinearModel


def _outputs(model: MixedLinearModel, source: TensorSource):
    """f_ML on ``source``, chunk by chunk, with its labels. Samples whose features the model keeps
    (``fitted_gram.F``: a prefix keeps its fitted set's) go through the head only, on the
    kept rows (the same features the statistics hold: no prefix pass); others through the network."""
    kept = getattr(model, "fitted_gram", None)
    if kept is not None and kept.F is not None and kept.ids is not None and source.ids is not None and len(kept.ids):
        ids = source.ids.to(torch.int64).cpu()
        pos = torch.searchsorted(kept.ids, ids).clamp(max=len(kept.ids) - 1)
        if bool((kept.ids[pos] == ids).all()):
            cs = source.chunk_size
            for i in range(0, len(ids), cs):
                feats = kept.F[pos[i : i + cs]].to(model.device_, model.dtype_)
                yield model.forward_features(feats), source.y[i : i + cs]
            return
    for x, y in source:
        yield model(x), y


def _scores(model: MixedLinearModel, source: TensorSource) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample loss, per-sample correct) on the CPU, remembered for these user weights: the
    job's evaluation asks for the eval and forget sets twice (accuracy, then the membership
    attack); a new solve (a new ``model.user``, or an in-place change) forgets the memo."""
    key = tuple((id(t), t._version) for t in model.user.values())
    memo = getattr(model, "_scores_memo", None)
    if memo is None or memo[0] is not model.user or memo[1] != key:
        memo = (model.user, key, [])
        model._scores_memo = memo
    for src, val in memo[2]:
        if src is source:
            return val
    losses, correct = [], []
    with torch.no_grad():
        for f, y in _outputs(model, source):
            r = f - model.targets(y, f.shape[1])
            losses.append(0.5 * (r.to(torch.float64) ** 2).sum(dim=1).cpu())
            correct.append(f.argmax(dim=1).cpu() == y)
    val = (torch.cat(losses), torch.cat(correct)) if losses else (torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool))
    memo[2].append((source, val))
    return val


def per_sample_loss(model: MixedLinearModel, source: TensorSource) -> torch.Tensor:
    """0.5‖f_ML(x) − κ·onehot(y)‖² per sample: the loss of §6.2 without the regulariser."""
    return _scores(model, source)[0]


def evaluate(model: MixedLinearModel, source: TensorSource, config=None) -> dict:
    """Accuracy and mean loss of the mixed-linear model on ``source``."""
    if len(source) == 0:
        return {"accuracy": None, "loss": None, "n": 0}
    losses, correct = _scores(model, source)
    return {"accuracy": int(correct.sum()) / len(source), "loss": float(losses.mean()), "n": len(source)}


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
