"""The declarative base every table derives from (here, not in ``service.core``: the models
import nothing of core, and core imports nothing of the models)."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass
