from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class HeldVersion(BaseModel):
    model: str
    number: int


class ForgottenClass(BaseModel):
    model: str
    label: int
    version: int = Field(description="The first version that no longer knows the class (its logit is masked when served)")


class SubjectRequest(BaseModel):
    id: uuid.UUID
    model: str | None = Field(description="null: the request covers every model holding the subject")
    status: str
    created_at: datetime
    due_at: datetime
    completed_at: datetime | None
    samples_removed: int | None
    clean_version: int | None = Field(description="Number of the first version clean of the subject")
    clean_version_model: str | None
    held_versions: list[HeldVersion] = Field(description="Versions that were trained on the subject's data")
    kind: str = Field("samples", description="samples | class (the subject is a class of the model)")
    forgotten_classes: list[ForgottenClass] = Field(default_factory=list, description="The classes this request made a model forget")


class CleanVersion(BaseModel):
    number: int
    created_at: datetime
    state: str


class ReleaseBound(BaseModel):
    number: int
    created_at: datetime
    state: str
    guarantee: str | None
    kl_nats: float | None = Field(description="null: this release carries no finite KL bound")
    epsilon_spent: float | None = Field(None, description="(ε, δ) releases (certified_removal): ε spent since the last retrain")
    delta: float | None = Field(None, description="the δ of epsilon_spent")


class ModelReceipt(BaseModel):
    model: str
    samples_remaining: int
    tombstoned_since: datetime | None
    forgotten_class: int | None = Field(None, description="The subject was this class of the model and the model forgot it "
                                        "(label tombstoned: new samples carrying it need renewed consent)")
    class_statement: str | None = Field(None, description="The forgotten class, in words")
    held_by_versions: list[int] = Field(description="Versions that were (or, while samples remain, are) trained on the subject")
    first_clean_version: CleanVersion | None
    latest_version: int | None
    latest_is_clean: bool | None = Field(description="null: the model has no such alias")
    production_version: int | None
    production_is_clean: bool | None
    cumulative_kl_nats: float = Field(
        description="Sum of kl_nats over every release since (and including) the first clean version; "
        "null in JSON (infinite) when one of them has no finite bound (listed in unbounded_versions)"
    )
    cumulative_kl_bits: float
    releases_since_deletion: int
    releases: list[ReleaseBound]
    unbounded_versions: list[int]
    latest_epsilon_spent: float | None = Field(
        None, description="(ε, δ) models: the newest release's ε_spent. It already accumulates every removal since the "
        "last retrain; releases share the secret perturbation, so the statement holds per release and is never summed")
    latest_delta: float | None = None
    epsilon_statement: str | None = Field(None, description='"per release" for (ε, δ) models')


class SubjectReceipt(BaseModel):
    subject_id: str = Field(description="Echoed back to the caller only; never stored or logged")
    subject_key: str
    requests: list[SubjectRequest]
    models: list[ModelReceipt]
