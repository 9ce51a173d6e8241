from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base
from service.models._types import JSONType, TZDateTime, utcnow


class Model(Base):
    """A registered network and its forgetting policy."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    architecture: Mapped[str] = mapped_column(String(200))
    architecture_config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # Shape of one input (without the batch dimension) and number of classes: uploads are
    # validated against them without torch.
    input_shape: Mapped[list[int]] = mapped_column(JSONType)
    num_classes: Mapped[int] = mapped_column(Integer)
    linearize: Mapped[str] = mapped_column(String(32), default="all")
    # What the user brought (DESIGN §6.8): mixed_linear | linear_head | standard; the method serves it.
    family: Mapped[str] = mapped_column(String(32), default="mixed_linear", server_default="mixed_linear")
    method: Mapped[str] = mapped_column(String(64), default="mixed_linear")
    # Each class is a person (DESIGN §6.8, kind ``class``): a label -> subject mapping
    # (``class_subjects``) makes a deletion request for such a subject forget the whole class.
    subjects_are_classes: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # ready | invalid (an uploaded checkpoint failed validation outside the API: nothing is served
    # from it; ``state_reason`` says why, and a new checkpoint upload clears it)
    state: Mapped[str] = mapped_column(String(16), default="ready", server_default="ready")
    state_reason: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    # Forgetting settings: l2 (mu), target_scale (kappa), noise_std (s), tolerances, gates.
    method_config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    batch_window_s: Mapped[int] = mapped_column(Integer, default=3600)
    batch_size: Mapped[int] = mapped_column(Integer, default=100)
    auto_approve: Mapped[bool] = mapped_column(Boolean, default=True)
    auto_promote: Mapped[bool] = mapped_column(Boolean, default=True)
    sla_days: Mapped[int] = mapped_column(Integer, default=30)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)
