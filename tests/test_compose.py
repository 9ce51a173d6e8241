"""docker-compose.yml is correct for a real deployment (no Docker engine runs here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


def _load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_the_production_processes():
    services = _load()["services"]
    assert set(services) >= {"postgres", "redis", "migrate", "api", "worker-gpu", "worker-default", "beat"}
    for name in ("postgres", "redis", "api"):
        assert "healthcheck" in services[name], name
    # The API and workers start only after migrations completed.
    for name in ("api", "worker-gpu", "worker-default", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_gpu_worker_is_one_process_with_a_reserved_gpu():
    gpu = _load()["services"]["worker-gpu"]
    cmd = gpu["command"]
    assert cmd[cmd.index("-Q") + 1] == "gpu"
    assert cmd[cmd.index("--concurrency") + 1] == "1"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_databases_and_objects_are_on_volumes_and_nothing_is_shared_by_the_workers():
    doc = _load()
    assert {"pgdata", "redisdata", "miniodata"} <= set(doc["volumes"])
    assert "artifacts" not in doc["volumes"]
    for name in ("api", "worker-gpu", "worker-default", "beat"):
        svc = doc["services"][name]
        assert not svc.get("volumes"), f"{name} must not share a filesystem"
        env = svc["environment"]
        assert env["LETHE_STORAGE__BACKEND"] == "s3" and env["LETHE_STORAGE__ENDPOINT_URL"] == "http://minio:9000"


def test_minio_with_a_bucket_creating_one_shot():
    services = _load()["services"]
    assert "healthcheck" in services["minio"]
    init = services["minio-init"]
    assert init["restart"] == "no" and init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(init["command"])
    assert "mc mb --ignore-existing" in script and "mc version enable" in script
    for name in ("api", "worker-gpu", "worker-default"):
        assert services[name]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_gpu_worker_scales_to_n():
    gpu = _load()["services"]["worker-gpu"]
    # --scale worker-gpu=N needs no fixed container name and no host port
    assert "container_name" not in gpu and "ports" not in gpu
    cmd = gpu["command"]
    assert "%h" in cmd[cmd.index("-n") + 1]  # node names unique per replica


def test_dockerfile_installs_pinned_torch_first():
    dockerfile = (ROOT / ".docker" / "Dockerfile").read_text()
    assert "torch==2.13.0" in dockerfile
    assert dockerfile.index("torch==2.13.0") < dockerfile.index("-e '.[workers]'")


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="no docker-compose binary to validate with"
)
def test_compose_config_validates():
    env = dict(os.environ, LETHE_SECURITY__SECRET_KEY="x" * 40, LETHE_AUDIT__HMAC_KEY="h" * 40,
               LETHE_AUDIT__SIGNING_KEY="A" * 43 + "=")
    out = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
