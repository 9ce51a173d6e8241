"""Data that ships with a package or is generated (no downloads)."""

from __future__ import annotations

import numpy as np


def load_digits_splits(seed: int = 0, n_subjects: int = 150, core_fraction: float = 0.3, eval_fraction: float = 0.2) -> dict:
    """scikit-learn's 8x8 digits (1,797 images, scaled to [0, 1]) split into core / user / eval,
    with generated subject ids on the user split (several samples per subject)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    n_core = int(core_fraction * len(y))
    n_eval = int(eval_fraction * len(y))
    core, ev, user = perm[:n_core], perm[n_core : n_core + n_eval], perm[n_core + n_eval :]
    subjects = np.array([f"user-{i:04d}" for i in rng.integers(0, n_subjects, size=len(user))])
    return {
        "core": (x[core], y[core]),
        "eval": (x[ev], y[ev]),
        "user": (x[user], y[user]),
        "user_subjects": subjects,
        "num_classes": 10,
        "input_shape": [64],
    }


def gaussian_mixture(n: int, d: int = 32, num_classes: int = 10, seed: int = 0, spread: float = 1.6) -> tuple[np.ndarray, np.ndarray]:
    """A generated classification set: class means on a sphere plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, d))
    means *= spread / np.linalg.norm(means, axis=1, keepdims=True) * np.sqrt(d) / 4
    y = rng.integers(0, num_classes, size=n)
    x = means[y] + rng.normal(size=(n, d))
    return x.astype(np.float32), y.astype(np.int64)
