"""lcodec against the oracle of retraining from scratch on D_r with the same recipe and seed
(scikit-learn's digits, a small MLP): after the step the forgotten samples' loss and the
loss-threshold MIA AUC move toward the retrained model's, by a margin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.unlearning.data import TensorSource
from workers.unlearning.datasets import load_digits_splits
from workers.unlearning.methods.base import ModelSpec
from workers.unlearning.registry import get_method

METHOD = get_method("lcodec")
SPEC = ModelSpec("mlp", {"in_features": 64, "hidden": [32], "num_classes": 10})


@pytest.fixture(scope="module")
def problem():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend
    try:
        d = load_digits_splits()
        x, y = d["user"][0][:400], d["user"][1][:400]
        # small enough to overfit (so there is membership to forget); λ small for a visible step
        cfg = METHOD.config_cls(device="cpu", epochs=60, lr=1e-2, batch_size=64, weight_decay=1e-4, damping=1e-4, seed=0)
        full = TensorSource(x, y, ids=np.arange(len(y)))
        forget_idx = np.random.default_rng(0).choice(len(y), 20, replace=False)
        forget, retained = full.subset(forget_idx), full.subset(np.setdiff1d(np.arange(len(y)), forget_idx))
        ev = TensorSource(*d["eval"])
        original = METHOD.build(SPEC, cfg)
        METHOD.train(original, full, cfg)
        oracle = METHOD.build(SPEC, cfg)
        METHOD.retrain(oracle, retained, cfg)
        before = _figures(original, forget, ev, cfg)
        result = METHOD.forget(original, retained, cfg, removed=forget)
        yield {"cfg": cfg, "before": before, "after": _figures(original, forget, ev, cfg), "oracle": _figures(oracle, forget, ev, cfg),
               "result": result, "model": original, "forget": forget, "eval": ev}
    finally:
        torch.set_num_threads(threads)


def _figures(model, forget, ev, cfg):
    return {"forget_loss": METHOD.evaluate(model, forget, cfg)["loss"], "eval_accuracy": METHOD.evaluate(model, ev, cfg)["accuracy"],
            "mia": METHOD.membership_auc(model, forget, ev, cfg)}


def test_the_problem_has_something_to_forget(problem):
    b, o = problem["before"], problem["oracle"]
    assert o["forget_loss"] > 5 * b["forget_loss"]  # the retrained model has not seen them
    assert b["mia"] > o["mia"] + 0.03


def test_forgotten_loss_moves_toward_the_retrained_model(problem):
    b, a, o = problem["before"], problem["after"], problem["oracle"]
    assert problem["result"].applied and problem["result"].units
    assert a["forget_loss"] >= 1.3 * b["forget_loss"]  # direction, with a margin of 30 %
    assert a["forget_loss"] < o["forget_loss"]  # a heuristic step: not past the oracle


def test_mia_auc_moves_toward_the_retrained_model(problem):
    b, a, o = problem["before"], problem["after"], problem["oracle"]
    assert abs(a["mia"] - o["mia"]) <= abs(b["mia"] - o["mia"]) - 0.005


def test_eval_accuracy_is_kept(problem):
    assert problem["after"]["eval_accuracy"] >= problem["before"]["eval_accuracy"] - 0.01
