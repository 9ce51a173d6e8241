"""`lethe serve --embedded --demo` (what `make run` starts) to the end, then a cold token reads
the manifest; the README shows the output the demo prints today; `lethe demo` and `lethe pull`
fail with one clear line when the server is not there or does not answer."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import httpx
import pytest
from embedded_support import ROOT, EmbeddedServer, clean_env, create_tokens, free_port

pytestmark = pytest.mark.integration

DEMO_TIMEOUT_S = 300


def _mask(line: str) -> str:
    """A printed line with its numbers and token-like values masked: the shape to compare."""
    line = re.sub(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "#", line.strip())
    return re.sub(r"https?://\S+", "URL", line)


def _readme_demo_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"```\n(registered digits-demo:.*?)```", text, re.S)
    assert m, "README has no demo output block"
    return [ln for ln in m.group(1).splitlines() if ln.strip()]


def test_embedded_demo_runs_to_the_end_and_a_cold_token_reads_the_manifest(tmp_path):
    data = tmp_path / "data"
    srv = EmbeddedServer(data, tmp_path / "serve.log", "--demo").start()
    try:
        deadline = time.monotonic() + DEMO_TIMEOUT_S
        while "dashboard: " not in (text := srv.log.read_text()).split("Uvicorn running", 1)[-1]:
            assert srv.proc.poll() is None, text
            assert "demo failed" not in text, text
            assert time.monotonic() < deadline, f"demo did not finish in {DEMO_TIMEOUT_S}s:\n{text}"
            time.sleep(0.5)
        printed = [ln for ln in text.split("Uvicorn running", 1)[-1].splitlines()
                   if re.match(r"^(registered|trained|filed|version|bound|  user-|audit chain|dashboard)", ln)]
        assert any(ln.startswith("trained: job succeeded") for ln in printed), printed
        assert sum("completed, samples removed" in ln for ln in printed) == 3, printed
        assert any(ln.startswith("audit chain: ok") for ln in printed), printed

        # The README's demo block is what the demo prints (numbers aside).
        readme = _readme_demo_block()
        assert [_mask(x) for x in readme] == [_mask(x) for x in printed if not x.startswith("dashboard")], (
            "README demo output differs from the demo's:\n" + "\n".join(printed))

        # A token never used before (cold: its lookup reads the database) gets the manifest at once.
        (serving,) = create_tokens(data, "serving", 1, "cold-serving")
        t0 = time.perf_counter()
        r = httpx.get(srv.base + "/v1/models/digits-demo/versions/latest",
                      headers={"Authorization": f"Bearer {serving}"}, timeout=30)
        elapsed = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        assert r.json()["number"] == 2 and elapsed < 5, (r.json()["number"], elapsed)
        assert re.search(r"(Z|\+00:00)$", r.json()["created_at"])
    finally:
        srv.stop()
    assert "database is locked" not in srv.log.read_text()


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True,
                          env=clean_env(), cwd=ROOT, timeout=timeout)


@pytest.mark.parametrize("command", [["demo"], ["pull", "digits-demo"]])
def test_cli_without_a_server_prints_one_clear_line_and_exits_1(command, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    to = ["--to", str(tmp_path / "served")] if command[0] == "pull" else []
    res = _cli(*command, *to, "--url", url, "--token", "x")
    assert res.returncode == 1, res
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot connect to " + url), res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_pull_against_a_server_that_does_not_answer_times_out_with_one_line(tmp_path):
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        res = _cli("pull", "digits-demo", "--to", str(tmp_path / "served"), "--url", url, "--token", "x", "--timeout", "1")
    assert res.returncode == 1, res
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "did not answer in time" in lines[0], res.stderr
    assert "Traceback" not in res.stderr
