"""Real processes for integration tests: uvicorn (API), a Celery worker, Celery beat."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[2]
SECRET = "integration-secret-key-0123456789-abcdefghij"
REDIS_URL = os.environ.get("LETHE_TEST_REDIS", "redis://127.0.0.1:6379/15")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_env(storage: dict) -> dict[str, str]:
    """LETHE_STORAGE__* for S3 storage settings (credentials travel in AWS_* from the environment)."""
    return {f"LETHE_STORAGE__{k.upper()}": str(v) for k, v in storage.items() if v is not None}


def env_for(db_url: str, storage: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update(
        LETHE_DATABASE__URL=db_url,
        LETHE_BROKER__URL=REDIS_URL,
        LETHE_STORAGE__ROOT=str(storage),
        LETHE_SECURITY__SECRET_KEY=SECRET,
        LETHE_PIPELINE__HEARTBEAT_INTERVAL_S="0.5",
        LETHE_PIPELINE__HEARTBEAT_TIMEOUT_S="4",
        LETHE_PIPELINE__SCHEDULER_INTERVAL_S="1",
        LETHE_PIPELINE__OUTBOX_INTERVAL_S="0.5",
        LETHE_PIPELINE__SWEEPER_INTERVAL_S="1",
        PYTHONPATH=f"{ROOT}:{ROOT / 'tests' / 'integration'}",
        # a legacy-style key ("module:function") the administrator declared (test_faults)
        LETHE_ARCHITECTURES__DECLARED='{"crashing_network:build": "crashing_network:build", "slow_network:build": "slow_network:build"}',
    )
    env.update(extra)
    return env


class Proc:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path, cwd: Path = ROOT) -> None:
        self.name, self.args, self.env, self.cwd = name, args, env, cwd
        self.log = log_dir / f"{name}.log"
        self.p: subprocess.Popen | None = None

    def start(self) -> "Proc":
        out = open(self.log, "a")
        self.p = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        return self

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.p is not None and self.p.poll() is None:
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(timeout=10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text().splitlines()[-n:]) if self.log.exists() else ""


def api(env: dict[str, str], log_dir: Path, port: int) -> Proc:
    return Proc("api", [sys.executable, "-m", "uvicorn", "service.main:create_app", "--factory", "--host", "127.0.0.1",
                        "--port", str(port), "--no-access-log"], env, log_dir)


def worker(env: dict[str, str], log_dir: Path, name: str = "worker", cwd: Path = ROOT, queues: str = "gpu,default") -> Proc:
    return Proc(name, [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues, "--pool", "solo",
                       "--concurrency", "1", "-n", f"{name}@%h", "--without-mingle", "--without-gossip", "--loglevel", "INFO"], env, log_dir, cwd)


def beat(env: dict[str, str], log_dir: Path) -> Proc:
    return Proc("beat", [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat", "--loglevel", "INFO",
                         "-s", str(log_dir / "celerybeat-schedule")], env, log_dir)


def wait_http(base: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{base} did not come up")


def wait_for(pred, timeout: float, what: str, interval: float = 0.3, on_timeout=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    extra = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out waiting for {what}\n{extra}")


def flush_redis() -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()
