"""A failed statement's error names no parameter value (they can be raw subject ids): its
message reaches logs (the API's 500 handler, Celery's task failures, the CLI)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from service.core.config import DatabaseSettings
from service.core.db import make_engine


@pytest.mark.parametrize("which", ["postgresql", "sqlite"])
def test_a_failed_statements_error_hides_its_parameters(which, database_url, tmp_path):
    url = database_url if which == "postgresql" else f"sqlite:///{tmp_path / 'hidden.db'}"
    engine = make_engine(DatabaseSettings(url=url))
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as err:
            conn.execute(text("SELECT x FROM no_such_table_hidden WHERE x = :v"), {"v": "raw-subject-773"})
    finally:
        engine.dispose()
    assert "no_such_table_hidden" in str(err.value)  # the statement is still said
    assert "raw-subject-773" not in str(err.value)
