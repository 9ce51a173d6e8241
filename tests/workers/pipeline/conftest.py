from __future__ import annotations

import pytest

from workers.runtime import Runtime


@pytest.fixture
def rt(clean_tables, settings):
    """A worker runtime on the real test database (real commits); tables emptied around it."""
    runtime = Runtime.from_settings(settings)
    yield runtime
    runtime.engine.dispose()
