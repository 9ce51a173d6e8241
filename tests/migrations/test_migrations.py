"""Migrations: upgrade -> downgrade -> upgrade on PostgreSQL, and models agree with them."""

from __future__ import annotations

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from service.core import migrate
from service.models import Base

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SCRATCH = "lethe_migrations_test"
URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{SCRATCH}"


@pytest.fixture
def scratch_url():
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{SCRATCH}"')
    yield URL
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)')


def _tables(url: str) -> set[str]:
    eng = create_engine(url)
    try:
        return set(inspect(eng).get_table_names()) - {"alembic_version"}
    finally:
        eng.dispose()


def _diff(url: str) -> list:
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        eng.dispose()


def test_round_trip_upgrade_downgrade_upgrade(scratch_url):
    migrate.upgrade(scratch_url)
    assert _tables(scratch_url) == set(Base.metadata.tables)
    migrate.downgrade(scratch_url, "base")
    assert _tables(scratch_url) == set()
    migrate.upgrade(scratch_url)
    assert _tables(scratch_url) == set(Base.metadata.tables)


def test_models_and_migrations_agree(scratch_url):
    migrate.upgrade(scratch_url)
    assert _diff(scratch_url) == []


def test_migrations_also_build_sqlite_for_embedded_mode(tmp_path):
    url = f"sqlite:///{tmp_path / 'embedded.sqlite3'}"
    migrate.upgrade(url)
    assert _tables(url) == set(Base.metadata.tables)
    assert _diff(url) == []
    migrate.downgrade(url, "base")
    assert _tables(url) == set()


def test_the_migration_tree_has_exactly_one_head_and_one_base():
    """Several issues add migrations at once: a second head (two migrations on the same parent)
    makes ``alembic upgrade head`` fail in production. Rebase the newer one onto the other."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config("postgresql://unused"))
    heads = script.get_heads()
    assert len(heads) == 1, f"more than one Alembic head: {heads}; set down_revision of the newer one to the other"
    assert len(script.get_bases()) == 1
    # every revision reaches the head: the chain is linear
    chain = [r.revision for r in script.walk_revisions()]
    assert len(chain) == len(set(chain)) == len(list(script.walk_revisions("base", heads[0])))
