"""The CODEC statistic (Azadkia & Chatterjee 2021) where the answer is known, and against a
literal loop over the paper's definition."""

from __future__ import annotations

import numpy as np
import pytest

from workers.unlearning.methods.lcodec.codec import codec, forward_select


def _literal(y, z, x=None):
    """T_n straight from the paper's formulas: Python loops, continuous data (no ties)."""
    y = np.asarray(y, float)
    n = len(y)
    z = np.asarray(z, float).reshape(n, -1)
    z = (z - z.mean(0)) / z.std(0)
    r = np.array([sum(y[j] <= y[i] for j in range(n)) for i in range(n)], float)
    big_l = np.array([sum(y[j] >= y[i] for j in range(n)) for i in range(n)], float)

    def nn(pts, i):
        d = [np.inf if j == i else float(((pts[j] - pts[i]) ** 2).sum()) for j in range(n)]
        return int(np.argmin(d))

    if x is None:
        num = sum(n * min(r[i], r[nn(z, i)]) - big_l[i] ** 2 for i in range(n))
        return num / sum(big_l[i] * (n - big_l[i]) for i in range(n))
    x = np.asarray(x, float).reshape(n, -1)
    x = (x - x.mean(0)) / x.std(0)
    xz = np.hstack([x, z])
    num = sum(min(r[i], r[nn(xz, i)]) - min(r[i], r[nn(x, i)]) for i in range(n))
    return num / sum(r[i] - min(r[i], r[nn(x, i)]) for i in range(n))


def test_matches_the_definition_literally():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 2))
    z = rng.normal(size=(60, 3))
    y = x[:, 0] + z[:, 1] ** 2 + 0.3 * rng.normal(size=60)
    assert codec(y, z) == pytest.approx(_literal(y, z), abs=1e-12)
    assert codec(y, z, x) == pytest.approx(_literal(y, z, x), abs=1e-12)


def test_independence_gives_about_zero_and_a_function_about_one():
    rng = np.random.default_rng(0)
    n = 2000
    z = rng.uniform(-1, 1, size=n)
    assert abs(codec(rng.normal(size=n), z)) < 0.05
    # a non-monotone function: correlation is ~0, CODEC is ~1
    y = np.cos(4 * z)
    assert abs(np.corrcoef(y, z)[0, 1]) < 0.2
    assert codec(y, z) > 0.95
    # rank-based: a monotone transform of Y does not change it
    assert codec(np.exp(3 * y), z) == pytest.approx(codec(y, z), abs=1e-12)


def test_conditional_statistic_sees_only_new_information():
    rng = np.random.default_rng(1)
    n = 1500
    x = rng.uniform(size=(n, 3))
    y = x[:, 0] + x[:, 1]
    # x1 completes the function given x0; x2 adds nothing given x0
    assert codec(y, x[:, 1], x[:, 0]) > 0.8
    assert abs(codec(y, x[:, 2], x[:, 0])) < 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forward_selection_picks_exactly_the_two_relevant_of_ten(seed):
    rng = np.random.default_rng(seed)
    n = 1000
    x = rng.uniform(size=(n, 10))
    a, b = rng.choice(10, size=2, replace=False)
    y = np.sin(3 * x[:, a]) + x[:, b] ** 2 + 0.05 * rng.normal(size=n)
    assert sorted(forward_select(y, x)) == sorted([a, b])


def test_forward_selection_respects_its_cap_and_refuses_bad_shapes():
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(500, 6))
    y = x[:, 0] + x[:, 1] + x[:, 2]
    assert len(forward_select(y, x, max_selected=1)) == 1
    with pytest.raises(ValueError):
        forward_select(y[:10], x)
