"""A real embedded server (``python -m service.cli serve --embedded``) for tests: uvicorn, the
in-process Celery worker and the ticker, on SQLite in a fresh data directory."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


class EmbeddedServer:
    def __init__(self, data: Path, log: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data = data
        self.log = log
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._out = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--embedded", "--data-dir", str(data),
             "--port", str(self.port), *extra],
            stdout=self._out, stderr=subprocess.STDOUT, env=clean_env() | (env or {}), cwd=ROOT,
        )
        self.admin_token = ""

    def start(self, timeout: float = 90.0) -> "EmbeddedServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            m = re.search(r"admin token \(shown once\): (\S+)", text)
            if m:
                self.admin_token = m.group(1)
                break
            if self.proc.poll() is not None:
                raise AssertionError(f"embedded server exited early:\n{text}")
            time.sleep(0.1)
        else:
            raise AssertionError(f"no admin token printed:\n{self.log.read_text()}")
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"embedded server did not become healthy:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()


def create_tokens(data: Path, role: str, n: int, name: str = "test") -> list[str]:
    """Tokens made by the same code as ``lethe token create --embedded-dir`` (one process
    start for many tokens), written into the running server's database."""
    from service.cli import embedded_settings
    from service.core.db import make_engine, make_session_factory
    from service.client.tokens import create_token
    from service.models import Role

    engine = make_engine(embedded_settings(data).database)
    try:
        with make_session_factory(engine).begin() as session:
            return [create_token(session, Role(role), f"{name}-{i}")[1] for i in range(n)]
    finally:
        engine.dispose()


def files_containing(root: Path, needles: list[str]) -> dict[str, list[str]]:
    """Every file under ``root`` (database, WAL, artifacts, logs), read as bytes: which needles
    (UTF-8, and UTF-16 as SQLite may store text) appear in which file."""
    hits: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            blob = path.read_bytes()
        except FileNotFoundError:  # the WAL or a temp file went away meanwhile
            continue
        for needle in needles:
            if needle.encode() in blob or needle.encode("utf-16-le") in blob:
                hits.setdefault(needle, []).append(str(path.relative_to(root)))
    return hits
