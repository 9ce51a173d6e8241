"""The interface every forgetting method implements (one registry, one contract; DESIGN §6.8).

The job runner (``workers.execution.run``) calls only this: it never imports a method's model
class nor reads a config field by name (except ``chunk_size``, common to every config). A method
owns its model object (opaque to the runner), its math, its release and its private artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from workers.unlearning.methods import Family, Guarantee, Kind, MethodConfig

# What the runner calls, by operation; ``zero``, ``retrain`` and ``import_checkpoint`` only where
# the family has them.
REQUIRED = ("build", "prepare", "train", "forget", "bound", "refine", "gate", "release", "evaluate",
            "membership_auc", "serve_bytes", "save_private", "load_private", "supports")
OPTIONAL = ("zero", "retrain", "import_checkpoint")


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model says about its network (the ``models`` row, without SQL)."""

    architecture: str
    architecture_config: dict[str, Any] = field(default_factory=dict)
    linearize: str = "all"


@runtime_checkable
class ForgettingMethod(Protocol):
    name: ClassVar[str]
    guarantee: ClassVar[Guarantee]  # of an ordinary forget release: exact | certified | heuristic
    families: ClassVar[frozenset[Family]]  # mixed_linear | linear_head | standard
    kinds: ClassVar[frozenset[Kind]]  # request kinds served: samples | class
    config_cls: ClassVar[type[MethodConfig]]
    # Names of the files a version keeps privately for the next job (never served). The first is
    # required (the noise-free state); the others are optional. Purge and revocation delete all.
    private_artifacts: ClassVar[tuple[str, ...]]

    def build(self, spec: ModelSpec, cfg: Any) -> Any:
        """A fresh, untrained model of this method's family."""

    def prepare(self, model: Any, core: Any, cfg: Any, progress: Any = None) -> dict:
        """Train what is trained on the ``core`` split (the core network), before any user data."""

    def train(self, model: Any, user: Any, cfg: Any, progress: Any = None) -> Any:
        """Fit on the user data; returns a ``SolveResult``."""

    def forget(self, model: Any, retained: Any, cfg: Any, progress: Any = None, removed: Any = None) -> Any:
        """Forget everything not in ``retained`` (D_r), from the model's current state.

        ``removed`` (optional): the forgotten samples, with their ids. A method that kept what it
        needs (e.g. the Gram sums of the fitted set, a private artifact) may forget by them alone,
        at a cost in proportion to them; the result must be the same as without them."""

    def bound(self, result: Any, cfg: Any, *, exact: bool | None = None, method: str | None = None) -> Any:
        """The release's ``Bound`` (guarantee, kl_nats, ...)."""

    def refine(self, cfg: Any) -> Any | None:
        """Tighter settings for a forget that failed its gates (DESIGN §6.6), or None."""

    def gate(self, bound: Any, parent_eval: dict | None, new_eval: dict | None, cfg: Any) -> Any:
        """A ``GateResult``: may this release be published?"""

    def release(self, model: Any, cfg: Any) -> Any:
        """The public parameters (noised); passed to :meth:`serve_bytes`."""

    def evaluate(self, model: Any, source: Any, cfg: Any) -> dict:
        """{"accuracy", "loss", "n"} on ``source``."""

    def membership_auc(self, model: Any, forget: Any, eval_: Any, cfg: Any) -> float:
        """Loss-threshold membership-inference AUC, forgotten vs eval samples."""

    def serve_bytes(self, model: Any, released: Any | None, metadata: dict[str, Any]) -> bytes:
        """The served file (``released`` None: the model's own parameters, no noise)."""

    def save_private(self, model: Any) -> dict[str, bytes]:
        """The private artifacts, by name (a subset of ``private_artifacts``, the first always)."""

    def load_private(self, blobs: dict[str, bytes], cfg: Any) -> Any:
        """The model back from :meth:`save_private`'s output."""

    def supports(self, operation: str) -> bool:
        """Whether ``zero`` / ``retrain`` / ``import_checkpoint`` exist for this method's family.

        ``import_checkpoint(spec, data: bytes, cfg)`` (standard family): the model from an
        uploaded ``state_dict``; raises ``InvalidDataError`` naming what does not fit."""
