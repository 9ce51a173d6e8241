from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base
from service.models._types import TZDateTime, utcnow


class Client(Base):
    """Who holds tokens and owns requests: a product backend, an operator team (DESIGN §10).

    Deletion requests belong to a client, not to a token, so rotating or revoking a token
    orphans nothing."""

    __tablename__ = "clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
