"""The `lethe` command: tokens are printed once and stored hashed."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from service.client.tokens import hash_token
from service.models import ApiToken


def test_token_create_prints_once_and_stores_only_the_hash(tmp_path):
    data = tmp_path / "embedded"
    from service.cli import embedded_settings
    from service.core import migrate

    settings = embedded_settings(data)
    migrate.upgrade(settings.database.url)
    out = subprocess.run([sys.executable, "-m", "service.cli", "token", "create", "--role", "auditor", "--name", "ops",
                          "--embedded-dir", str(data)], capture_output=True, text=True, check=True)
    token = out.stdout.strip()
    assert token.startswith("lethe_") and len(token) > 40
    eng = create_engine(settings.database.url)
    with Session(eng) as s:
        row = s.execute(select(ApiToken)).scalar_one()
    eng.dispose()
    assert row.role == "auditor" and row.name == "ops"
    assert row.token_hash == hash_token(token) and token not in (row.token_hash, row.prefix)
    bad = subprocess.run([sys.executable, "-m", "service.cli", "token", "create", "--role", "wizard", "--embedded-dir", str(data)],
                         capture_output=True, text=True)
    assert bad.returncode != 0
