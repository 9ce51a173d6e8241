"""The interface every forgetting method implements (one registry, one contract)."""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch
from pydantic import BaseModel

from workers.unlearning.bounds import Bound
from workers.unlearning.data import TensorSource
from workers.unlearning.linearized import MixedLinearModel
from workers.unlearning.objective import Progress, SolveResult


class ForgettingMethod(Protocol):
    name: ClassVar[str]
    guarantee: ClassVar[str]  # "exact" | "certified" | "heuristic"
    config_cls: ClassVar[type[BaseModel]]

    def train_core(self, model: MixedLinearModel, core: TensorSource, cfg, progress: Progress = None) -> dict: ...
    def fit(self, model: MixedLinearModel, user: TensorSource, cfg, progress: Progress = None) -> SolveResult: ...
    def forget(self, model: MixedLinearModel, retained: TensorSource, cfg, progress: Progress = None) -> SolveResult: ...
    def zero(self, model: MixedLinearModel) -> SolveResult: ...
    def retrain(self, model: MixedLinearModel, retained: TensorSource, cfg, core_source: TensorSource | None = None, progress: Progress = None) -> SolveResult: ...
    def bound(self, result: SolveResult, cfg) -> Bound: ...
    def release(self, model: MixedLinearModel, cfg) -> dict[str, torch.Tensor]: ...
