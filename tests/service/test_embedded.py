"""Embedded mode (SQLite + local artifacts, no servers) from an empty directory."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_token(proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        m = re.search(r"admin token \(shown once\): (\S+)", text)
        if m:
            return m.group(1)
        if proc.poll() is not None:
            raise AssertionError(f"embedded server exited early:\n{text}")
        time.sleep(0.2)
    raise AssertionError(f"no admin token printed:\n{log.read_text()}")


def _wait_ready(base: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("embedded server did not become healthy")


def test_embedded_mode_serves_a_create_and_a_read_from_an_empty_directory(tmp_path):
    data = tmp_path / "lethe-data"
    assert not data.exists()
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--embedded", "--data-dir", str(data), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        token = _wait_for_token(proc, log)
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base)
        headers = {"Authorization": f"Bearer {token}"}
        r = httpx.post(base + "/v1/deletion-requests", json={"subject_id": "embedded-subject-7f3a"}, headers=headers)
        assert r.status_code == 202, r.text
        rid = r.json()["id"]
        got = httpx.get(base + f"/v1/deletion-requests/{rid}", headers=headers)
        assert got.status_code == 200 and got.json()["id"] == rid
        assert (data / "lethe.sqlite3").exists()
        assert httpx.get(base + "/readyz").status_code == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    # The server's log never contains the raw subject id.
    assert "embedded-subject-7f3a" not in log.read_text()
