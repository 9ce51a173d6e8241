"""Ten chained forgets through the pipeline use the kept Gram sums (issue 16, item 1) and stay
exact against a dense float64 retrain; every bound covers the true KL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pipeline_support import file_request, ingest, load_all, make_data, register_model
from sqlalchemy import select

from service.job import service as job_service
from service.models import JobKind, Model, ModelVersion
from workers.execution.run import run_job
from workers.unlearning import load_model
from workers.unlearning.methods.mixed_linear.method import MixedLinear


def _dense_retrain(model, x: np.ndarray, y: np.ndarray, mu: float, kappa: float) -> np.ndarray:
    """argmin L_{D_r} for the affine head, [W_u, b_u] (C × (h+1)), by one dense float64 solve —
    numpy only, none of the library's sums or solvers."""
    with torch.no_grad():
        phi = model.features(torch.from_numpy(x)).to(torch.float64).numpy()
    lin = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][0]
    Wc, bc = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
    n = len(y)
    A = np.concatenate([phi, np.ones((n, 1))], axis=1)
    T = np.zeros((n, Wc.shape[0]))
    T[np.arange(n), y] = kappa
    R0 = phi @ Wc.T + bc - T
    H = A.T @ A / n + mu * np.eye(A.shape[1])
    return np.linalg.solve(H, -(A.T @ R0) / n).T


def _user_aug(model) -> np.ndarray:
    w = {k: v.detach().double().numpy() for k, v in model.user.items()}
    W = next(v for k, v in w.items() if k.endswith("weight"))
    b = next(v for k, v in w.items() if k.endswith("bias"))
    return np.concatenate([W, b[:, None]], axis=1)


def _forget(rt, model_id, subject: str, before=None) -> None:
    """File a request for ``subject`` (after ``before(session, model)``), run forget-now to success."""
    with rt.session_factory.begin() as s:
        model = s.get(Model, model_id)
        if before is not None:
            before(s, model)
        file_request(s, model, subject)
        job_id = job_service.forget_now(s, rt.settings, model, "test").id
    assert run_job(rt, job_id) == "succeeded"


def _latest(s, model_id) -> ModelVersion:
    return s.execute(select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.number.desc())).scalars().first()


def test_ten_chained_forgets_downdate_the_kept_gram_and_stay_exact(rt, monkeypatch):
    data = make_data(n_subjects=30, per_subject=6)
    with rt.session_factory.begin() as s:
        m = register_model(s, "chain")
        load_all(s, rt.store, m, data)
        model_id = m.id
        job_id = job_service.create_job(s, rt.settings, m, JobKind.train, actor="test").id
    assert run_job(rt, job_id) == "succeeded"

    calls = {"rebuild": 0, "downdate": 0}
    real_solve, real_down = MixedLinear._solve, MixedLinear.forget_downdate

    def solve(self, *a, **k):
        calls["rebuild"] += 1
        return real_solve(self, *a, **k)

    def down(self, *a, **k):
        calls["downdate"] += 1
        return real_down(self, *a, **k)

    monkeypatch.setattr(MixedLinear, "_solve", solve)
    monkeypatch.setattr(MixedLinear, "forget_downdate", down)

    xu, yu = data["user"]
    subjects = np.array(data["subjects"])
    live = np.ones(len(yu), dtype=bool)
    extra_x, extra_y = [], []
    rng = np.random.default_rng(5)
    for k in range(10):
        gone = f"subject-{3 * k:03d}"

        def late(s, model):  # new samples arrive between forgets: the downdate adds them
            xn = rng.normal(size=(8, data["d"])).astype(np.float32)
            yn = rng.integers(0, data["classes"], size=8)
            ingest(s, rt.store, model, xn, yn, ["late-subject"] * 8, "user")
            extra_x.append(xn)
            extra_y.append(yn)

        _forget(rt, model_id, gone, late if k == 4 else None)
        live &= subjects != gone
        with rt.session_factory() as s:
            v = _latest(s, model_id)
            assert v.number == k + 2
            bound, private = v.bound, load_model(rt.store.path(v.private_uri))
            cfg = s.get(Model, model_id).method_config
        x_r = np.concatenate([xu[live], *extra_x])
        y_r = np.concatenate([yu[live], *extra_y])
        w_star = _dense_retrain(private, x_r, y_r, cfg["l2"], 1.0)
        w = _user_aug(private)
        assert np.linalg.norm(w - w_star) / np.linalg.norm(w_star) <= 1e-6
        true_kl = float(((w - w_star) ** 2).sum() / (2 * cfg["noise_std"] ** 2))
        print(f"forget {k + 1}: rel={np.linalg.norm(w - w_star) / np.linalg.norm(w_star):.2g} bound={bound['kl_nats']:.3g} true={true_kl:.3g}")
        assert bound["kl_nats"] >= true_kl, (k, bound, true_kl)
    # every forget went by the kept statistics, none rebuilt D_r's Gram from all of it
    assert calls == {"rebuild": 0, "downdate": 10}


@pytest.mark.parametrize("dtype", ["mixed", "float64"])
def test_chained_forgets_downdate_by_kept_features_and_stay_exact(rt, monkeypatch, dtype):
    """dtype: mixed (what auto means on CUDA: a float32 prefix, float64 head and user weights) and
    float64 (issue 16b: its rows depend on the batch shape too) through the pipeline; three chained
    forgets downdate the kept sums by the kept feature rows, and every version equals the dense
    float64 solve on exactly the features it keeps (which are the prefix's outputs of the retained
    samples), with the bound above the true KL."""
    from safetensors.torch import load as st_load

    from service.model_registry import repository as registry_repo
    from service.models import Sample
    from workers.unlearning import GramState
    from workers.unlearning.serialization import load_model_from_bytes

    data = make_data(n_subjects=30, per_subject=6)
    with rt.session_factory.begin() as s:
        m = register_model(s, f"chain{dtype}")
        m.method_config = {**m.method_config, "dtype": dtype}
        load_all(s, rt.store, m, data)
        model_id = m.id
        job_id = job_service.create_job(s, rt.settings, m, JobKind.train, actor="test").id
    assert run_job(rt, job_id) == "succeeded"
    rebuilds = []
    real_solve = MixedLinear._solve
    monkeypatch.setattr(MixedLinear, "_solve", lambda self, *a, **k: rebuilds.append(1) or real_solve(self, *a, **k))
    xu, yu = data["user"]
    subjects = np.array(data["subjects"])
    live = np.ones(len(yu), dtype=bool)
    for k in range(3):
        gone = f"subject-{3 * k:03d}"
        _forget(rt, model_id, gone)
        live &= subjects != gone
        with rt.session_factory() as s:
            v = _latest(s, model_id)
            cfg = s.get(Model, model_id).method_config
            arts = registry_repo.private_artifacts(s, v)
            assert v.number == k + 2 and v.bound["guarantee"] == "certified" and not rebuilds  # the downdate, no fallback
            kept = GramState.from_tensors(st_load(rt.store.read_bytes(arts["gram"])))
            labels = dict(s.execute(select(Sample.id, Sample.label).where(Sample.id.in_(kept.ids.tolist()))).all())
        private = load_model_from_bytes(rt.store.read_bytes(arts["weights"]), dtype=dtype)
        assert kept.F is not None and kept.F.dtype == private.prefix_dtype_ and len(kept.ids) == int(live.sum()) == len(labels)
        # the kept rows are the float32 prefix's features of exactly the retained samples
        phi = private.features(torch.from_numpy(xu[live])).double()
        F = kept.F.double()
        tol = 1e-5 if dtype == "mixed" else 1e-12
        assert torch.allclose(F.T @ F, phi.T @ phi, rtol=tol, atol=tol)
        # dense float64 solve on the kept features (numpy; none of the library's sums or solvers)
        lin = [mod for mod in private.head.modules() if isinstance(mod, torch.nn.Linear)][0]
        Wc, bc = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
        y = np.array([labels[int(i)] for i in kept.ids])
        A = np.concatenate([F.numpy(), np.ones((len(y), 1))], axis=1)
        T = np.zeros((len(y), Wc.shape[0]))
        T[np.arange(len(y)), y] = 1.0
        w_star = np.linalg.solve(A.T @ A / len(y) + cfg["l2"] * np.eye(A.shape[1]), -(A.T @ (F.numpy() @ Wc.T + bc - T)) / len(y)).T
        w = _user_aug(private)
        assert np.linalg.norm(w - w_star) / np.linalg.norm(w_star) <= 1e-9
        true_kl = float(((w - w_star) ** 2).sum() / (2 * cfg["noise_std"] ** 2))
        assert true_kl <= v.bound["kl_nats"] <= cfg["max_kl_per_release"]
