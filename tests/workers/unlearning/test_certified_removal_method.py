"""``certified_removal`` behind the method interface (issue 15, part 3): the extractor is trained
on core data only, user features are computed once and kept privately, b is never served, the
ledger survives the private artifacts, the budget retrains, and bad settings are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load as st_load

from workers.unlearning import ModelSpec, TensorSource, get_method
from workers.unlearning.methods import parse_config
from workers.unlearning.methods.certified_removal import head as H
from workers.unlearning.methods.certified_removal.method import load_linear_head

SPEC = ModelSpec("mlp", {"in_features": 6, "hidden": [8], "num_classes": 3}, "all")


def _data(n=90, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 2.0 * torch.randn(3, 6, generator=g)[y] + torch.randn(n, 6, generator=g)
    return x.float(), y


@pytest.fixture
def trained():
    method = get_method("certified_removal")
    cfg = method.config_cls(core_epochs=5, l2=0.05, noise_std=1.0, epsilon=50.0, chunk_size=16)
    x, y = _data()
    model = method.build(SPEC, cfg)
    method.prepare(model, TensorSource(x[:30], y[:30]), cfg)
    user = TensorSource(x[30:], y[30:], chunk_size=16, ids=torch.arange(100, 160))
    result = method.train(model, user, cfg)
    return method, cfg, model, user, result, (x, y)


def test_extractor_is_trained_on_core_only_and_user_features_are_kept(trained):
    method, cfg, model, user, result, (x, y) = trained
    before = {k: v.clone() for k, v in model.extractor.state_dict().items()}
    fresh = method.build(SPEC, cfg)
    assert any(not torch.equal(before[k], v) for k, v in fresh.extractor.state_dict().items())  # prepare trained it
    method.train(model, user, cfg)  # training the head never touches the extractor
    assert all(torch.equal(before[k], v) for k, v in model.extractor.state_dict().items())
    blobs = method.save_private(model)
    feats = st_load(blobs["features"])
    assert torch.equal(feats["ids"], torch.arange(100, 160))
    assert torch.allclose(feats["x"], model.net().features(user.x))  # the user features, kept privately
    assert float(torch.linalg.vector_norm(feats["x"], dim=1).max()) <= 1.0 + 1e-12


def test_b_is_private_and_the_served_file_predicts_like_the_model(trained):
    method, cfg, model, user, result, (x, y) = trained
    served = method.serve_bytes(model, method.release(model, cfg), {"model": "m"})
    assert "head.b" not in st_load(served) and "head.b" in st_load(method.save_private(model)["state"])
    bound = method.bound(result, cfg).to_dict()
    b = model.head.b.reshape(-1).tolist()
    assert not any(isinstance(v, list) for v in bound.values()) and not set(b) & set(bound.values())
    net = load_linear_head(served)
    acc = float((net.predict(x) == y).double().mean())
    assert acc == method.evaluate(model, TensorSource(x, y), cfg)["accuracy"] > 0.5  # chance: 1/3


def test_forget_is_the_newton_step_and_beta_survives_the_private_artifacts(trained):
    method, cfg, model, user, result, (x, y) = trained
    state = model.head
    keep = torch.arange(60) >= 4
    expected = H.remove(model.x[keep], H.one_vs_rest(model.y[keep], 3), state.w, state.b, cfg.l2, cfg.loss)  # the math, directly
    back = method.load_private(method.save_private(model), cfg)
    r = method.forget(back, user.subset(keep.nonzero().reshape(-1)), cfg)
    assert r.operation == "forget" and r.retrain_reason == ""
    assert torch.equal(back.head.w, expected.w) and r.beta == pytest.approx(result.beta + expected.bound, rel=1e-12)
    b = method.bound(r, cfg)
    assert b.guarantee == "certified" and b.extra["statement"] == "per release"
    assert b.extra["epsilon_spent"] == pytest.approx(H.Budget(cfg.epsilon, cfg.delta, cfg.noise_std).spent(r.beta))
    assert b.extra["budget_left"] == pytest.approx(cfg.epsilon - b.extra["epsilon_spent"])
    # without ids, D_r's features are computed again from the same extractor: the same step
    again = method.load_private(method.save_private(model), cfg)
    again.ids = None
    r2 = method.forget(again, TensorSource(user.x[keep], user.y[keep]), cfg)
    assert torch.allclose(again.head.w, back.head.w, rtol=0, atol=1e-12) and r2.operation == "forget"


def test_the_budget_retrains_with_a_fresh_b_and_resets_epsilon(trained):
    method, cfg, model, user, result, (x, y) = trained
    first = method.forget(model, user.subset(torch.arange(3, 60)), cfg)
    tight = cfg.model_copy(update={"epsilon": method.bound(first, cfg).extra["epsilon_spent"] * 1.5})
    b_before = model.head.b.clone()
    r = method.forget(model, user.subset(torch.arange(20, 60)), tight)  # a big removal: past the budget
    bound = method.bound(r, tight)
    assert r.operation == "retrain" and bound.extra["retrain_reason"] == "budget exhausted" and bound.guarantee == "exact"
    assert bound.extra["epsilon_spent"] < 1e-6 and bound.extra["removals_since_retrain"] == 0
    assert not torch.equal(model.head.b, b_before) and model.head.n == 40
    oracle, _ = H.fit(model.x, H.one_vs_rest(model.y, 3), model.head.b, cfg.l2, cfg.loss)
    assert torch.allclose(model.head.w, oracle, rtol=0, atol=1e-12)


def test_new_samples_since_training_retrain_the_head(trained):
    method, cfg, model, user, result, (x, y) = trained
    more = TensorSource(torch.cat([user.x, x[:5]]), torch.cat([user.y, y[:5]]), ids=torch.arange(100, 165))
    r = method.forget(model, more, cfg)
    assert r.operation == "retrain" and r.retrain_reason == "new samples" and model.head.n == 65


@pytest.mark.parametrize("bad", [{"epsilon": 0}, {"epsilon": -1}, {"delta": 0}, {"delta": 1}, {"delta": 1.5},
                                 {"noise_std": 0}, {"l2": 0}, {"l2": -1e-3}, {"loss": "hinge"}, {"epsilon": float("inf")}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValidationError):
        parse_config("certified_removal", bad)
    assert parse_config("certified_removal", {}).epsilon > 0  # the documented defaults


def test_least_squares_heads_remove_exactly(trained):
    method, _, model, user, _, _ = trained
    cfg = method.config_cls(core_epochs=5, loss="least_squares", l2=0.05)
    method.train(model, user, cfg)
    r = method.forget(model, user.subset(torch.arange(10, 60)), cfg)
    x_r, t_r = model.x.numpy(), H.one_vs_rest(model.y, 3).numpy()
    exact = np.linalg.solve(x_r.T @ x_r + cfg.l2 * 50 * np.eye(x_r.shape[1]), x_r.T @ t_r - model.head.b.numpy().T).T
    assert np.allclose(model.head.w.numpy(), exact, rtol=0, atol=1e-12) and r.beta_step < 1e-9


def test_the_served_file_loads_with_the_library_loader(trained, tmp_path):
    from workers.unlearning import load_model

    method, cfg, model, user, result, (x, y) = trained
    path = tmp_path / "v.safetensors"
    path.write_bytes(method.serve_bytes(model, method.release(model, cfg), {"model": "m"}))
    served = load_model(path)  # what LetheClient.pull calls
    assert torch.equal(served.predict(x), load_linear_head(path.read_bytes()).predict(x))
    assert torch.allclose(served(x), model.net()(x))
    from workers.unlearning.methods.certified_removal.method import FORMAT
    from workers.unlearning.serialization import LINEAR_HEAD_FORMAT

    assert FORMAT == LINEAR_HEAD_FORMAT  # the library loader dispatches on it


def test_zero_holds_nothing_and_the_next_forget_retrains(trained):
    method, cfg, model, user, result, (x, y) = trained
    z = method.zero(model)
    bound = method.bound(z, cfg, exact=True, method="zero")
    assert bound.guarantee == "exact" and bound.extra["epsilon_spent"] == 0.0 and not bool(method.release(model, cfg).any())
    back = method.load_private(method.save_private(model), cfg)
    r = method.forget(back, user.subset(torch.arange(5, 60)), cfg)
    assert r.operation == "retrain" and r.retrain_reason == "after zero" and back.head.n == 55
    oracle, _ = H.fit(back.x, H.one_vs_rest(back.y, 3), back.head.b, cfg.l2, cfg.loss)
    assert torch.allclose(back.head.w, oracle, rtol=0, atol=1e-12)
