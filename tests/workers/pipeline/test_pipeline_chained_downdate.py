"""Ten chained forgets through the pipeline use the kept Gram sums (issue 16, item 1) and stay
exact against a dense float64 retrain; every bound covers the true KL."""

from __future__ import annotations

import numpy as np
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
        with rt.session_factory.begin() as s:
            model = s.get(Model, model_id)
            if k == 4:  # new samples arrive between forgets: the downdate adds them
                xn = rng.normal(size=(8, data["d"])).astype(np.float32)
                yn = rng.integers(0, data["classes"], size=8)
                ingest(s, rt.store, model, xn, yn, ["late-subject"] * 8, "user")
                extra_x.append(xn)
                extra_y.append(yn)
            file_request(s, model, gone)
            job_id = job_service.forget_now(s, rt.settings, model, "test").id
        assert run_job(rt, job_id) == "succeeded"
        live &= subjects != gone
        with rt.session_factory() as s:
            v = s.execute(select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.number.desc())).scalars().first()
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
