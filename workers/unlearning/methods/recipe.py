"""Settings shared by every method of the ``standard`` family (torch-free: the service validates
them): the training recipe a network was (or will be) trained with, and the thresholds of the
measured gates a heuristic release must pass (DESIGN §6.6–6.7).

A method of the family subclasses :class:`StandardConfig` and adds its own fields; the recipe is
what ``workers.unlearning.standard.train`` runs and what the ``retrain`` fallback repeats."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from workers.unlearning.methods import MethodConfig


class StandardConfig(MethodConfig):
    families: ClassVar[frozenset[str]] = frozenset({"standard"})
    # why ``POST /v1/models/{name}/checkpoint`` is refused for this method (None: uploads are taken)
    checkpoint_refused: ClassVar[str | None] = None

    method: str
    # -- the training recipe (absurd values are refused at registration) -----------------------
    optimizer: Literal["sgd", "adam"] = Field("adam", description="torch.optim.SGD or torch.optim.Adam")
    lr: float = Field(1e-2, gt=0, le=10, description="learning rate")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum (ignored by Adam)")
    epochs: int = Field(30, ge=0, le=10_000)
    batch_size: int = Field(64, ge=1, le=1_000_000)
    weight_decay: float = Field(1e-4, ge=0, le=1, description="L2 coefficient: the loss is CE + (wd/2)‖θ‖², as torch adds wd·θ to the gradient")
    seed: int = Field(0, ge=0, description="initialisation and shuffling")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # -- gates (DESIGN §6.6–6.7): measured, never taken on faith ------------------------------
    max_accuracy_drop: float = Field(0.02, ge=0, le=1, description="eval accuracy may drop at most this much against the parent")
    max_retain_drop: float = Field(0.03, ge=0, le=1, description="retained accuracy may drop at most this much against the parent")
    max_forget_gap: float = Field(0.15, ge=0, le=1, description="|forget-set accuracy − eval accuracy| at most this (look unseen, not score 0)")
    max_mia_gap: float = Field(0.15, ge=0, le=0.5, description="|MIA AUC (forgotten vs eval) − 0.5| at most this")
    min_forget_samples: int = Field(30, ge=1, description="below this many forgotten samples the gates judge a confidence interval, not a point")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="level of those intervals")
