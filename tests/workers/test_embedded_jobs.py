"""Embedded mode end to end (issue 8): the in-process worker runs each job in a child process; a
job that allocates past the memory cap ends ``failed`` while a client keeps reading, and the
server (API and worker) stays up and small."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]

NETS = '''
import time

import torch
from torch import nn


def hog(in_features=4, num_classes=3, gib=3):
    """Grows by 64 MiB blocks to ``gib`` GiB when built for a job (nothing on the meta device)."""
    if torch.empty(0).device.type != "meta":
        blocks = []
        for _ in range(gib * 16):
            blocks.append(torch.ones(16 << 20))
            time.sleep(0.02)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def test_embedded_job_over_the_memory_cap_fails_while_the_api_keeps_answering(tmp_path):
    nets = tmp_path / "nets"
    nets.mkdir()
    (nets / "lethe_embedded_nets.py").write_text(NETS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(nets)]),
        LETHE_ARCHITECTURES__DECLARED='{"hog": "lethe_embedded_nets:hog"}',
        LETHE_JOBS__MEMORY_LIMIT_MB="1024",
        LETHE_PIPELINE__JOB_MAX_ATTEMPTS="3",
    )
    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--embedded", "--data-dir", str(tmp_path / "data"),
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        token = None
        while token is None:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            m = re.search(r"admin token \(shown once\): (\S+)", log.read_text())
            token = m.group(1) if m else None
            time.sleep(0.2)
        h = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=h, timeout=60) as c:  # the probe imports torch: slow on a loaded machine
            while True:
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            r = c.post("/v1/models", json={"name": "hog", "architecture": "hog", "architecture_config": {"in_features": 4, "num_classes": 3},
                                           "input_shape": [4], "num_classes": 3, "method_config": {"device": "cpu", "core_epochs": 1}})
            assert r.status_code == 201, r.text
            rows = [{"subject_id": f"s{i}", "split": ("core", "user", "eval")[i % 3], "label": i % 3, "x": [i, 1.0, 0.0, -1.0]}
                    for i in range(12)]
            assert c.post("/v1/models/hog/samples", json={"samples": rows}).status_code == 201
            job = c.post("/v1/models/hog/train")
            assert job.status_code == 202, job.text
            job_id = job.json()["id"]
            reads, status, body = 0, None, {}
            deadline = time.monotonic() + 240
            while status not in ("failed", "succeeded"):
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                assert c.get("/v1/models/hog").status_code == 200
                body = c.get(f"/v1/jobs/{job_id}").json()
                status = body["status"]
                reads += 1
                time.sleep(0.1)
            assert status == "failed" and body["attempts"] == 1, body
            assert "memory cap of 1024 MiB" in body["error"], body["error"]
            assert reads >= 5
            # still up: the API answers, the worker takes new work, and the server never held the hog
            assert proc.poll() is None
            assert c.get("/readyz").status_code == 200
            assert c.post("/v1/deletion-requests", json={"subject_id": "s1", "model": "hog"}).status_code == 202
            assert _rss_mib(proc.pid) < 1024
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
