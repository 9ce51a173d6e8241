from __future__ import annotations

import pytest
from sqlalchemy import text

from service.models import Base
from workers.runtime import Runtime


def _truncate(engine) -> None:
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture
def rt(engine, settings):
    """A worker runtime on the real test database (real commits); tables emptied around it."""
    _truncate(engine)
    runtime = Runtime.from_settings(settings)
    yield runtime
    runtime.engine.dispose()
    _truncate(engine)
