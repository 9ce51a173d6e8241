"""Each job in a process of its own, with a memory cap (DESIGN §10: a job can never take the API down).

Parent side, :func:`run_isolated(rt, job_id) <run_isolated>` (the ``job.run`` task calls it, in a
Celery worker or in the embedded server's in-process worker): starts
``python -m workers.execution.isolation`` and sends it the job id, a result file and the settings
on its stdin (pickled: they may hold secrets, never put on a command line), and watches the
child's resident memory every ``jobs.watchdog_interval_s``. The parent imports no torch. With
``jobs.warm_process`` the next job's process is started while a job runs: it imports torch and
the job code, then waits on its stdin, so the next job skips the process start (a spare whose
environment differs from the next job's, or that died, is replaced by a fresh process).

Child side, :func:`main`: rebuilds the runtime from the settings, registers the architectures the
administrator declared, resolves the job's device and, for a CPU job, caps its own address space
with ``RLIMIT_AS`` (CUDA initialisation needs far more address space than memory, so a CUDA job
gets the RSS watchdog only), then runs :func:`workers.execution.run.run_job` (from the database,
by job id) and writes its status to RESULT_FILE.

A job over the cap ends ``failed`` at once, without retries, with an error naming the cap; its
requests go back to the queue (:func:`service.job.service.fail_job`):

* under ``RLIMIT_AS`` an allocation fails inside the child; :func:`out_of_memory` recognises it
  and ``run_job`` records the failure;
* past the RSS cap the parent kills the child (SIGKILL) and fails the job itself.

A child that dies otherwise (a crash, a signal) is a failed attempt: retried while attempts
remain, as when a worker dies. The child exits when its parent disappears.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from service.core.config import Settings
from service.job import service as job_service
from service.models import Job
from service.models._types import utcnow
from workers.execution.common import memory_cap_text, out_of_memory
from workers.runtime import Runtime

log = logging.getLogger("lethe.isolation")

# ----------------------------------------------------------------------------- parent
def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _job_state(rt: Runtime, job_id: uuid.UUID) -> tuple[bool, int]:
    """(whether a delivery has anything to do, attempts so far), read without a lock."""
    with rt.session_factory() as session:
        job = session.get(Job, job_id)
        return job_service.claimable(job, rt.settings, utcnow()), (job.attempts if job is not None else 0)


def _fail_killed(rt: Runtime, job_id: uuid.UUID, attempts_before: int, error: str, *, retry: bool) -> str:
    """The child died without recording an outcome. When its attempt (the one after
    ``attempts_before``) still owns the job, fail it (``retry=False``) or treat it as a failed
    attempt (retried while attempts remain)."""
    with rt.session_factory.begin() as session:
        return job_service.record_failure(session, rt.settings, job_id, attempts_before + 1, error, "", permanent=not retry)


_spare: tuple[dict[str, str], subprocess.Popen] | None = None  # the process started ahead, and its environment
_spare_lock = threading.Lock()


def _spawn(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workers.execution.isolation"], stdin=subprocess.PIPE, env=env)


def _job_process(env: dict[str, str]) -> subprocess.Popen:
    """The spare started ahead when it is alive and has this environment; else a new process.
    A spare holds no job until it reads one from its stdin, so using it or not is the same."""
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None:
        spare_env, proc = spare
        if spare_env == env and proc.poll() is None:
            return proc
        proc.kill()
        proc.wait()
    return _spawn(env)


def _start_spare(env: dict[str, str]) -> None:
    global _spare
    with _spare_lock:
        if _spare is None:
            _spare = (env, _spawn(env))


def run_isolated(rt: Runtime, job_id: uuid.UUID | str) -> str:
    """Run the job in a child process under the memory cap; the same statuses as ``run_job``."""
    job_id = uuid.UUID(str(job_id))
    jobs = rt.settings.jobs
    claimable, attempts_before = _job_state(rt, job_id)
    if not claimable:  # a duplicate delivery (or a finished job): no process to start
        return "skipped"
    cap = jobs.memory_limit_mb << 20
    env = {**os.environ, "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")}
    fd, result_name = tempfile.mkstemp(prefix="lethe-job-", suffix=".status")
    os.close(fd)
    result = Path(result_name)
    try:
        child = _job_process(env)
        try:
            child.stdin.write(pickle.dumps((str(job_id), str(result), rt.settings)))
            child.stdin.close()
        except BrokenPipeError:
            pass
        if jobs.warm_process:
            _start_spare(env)  # imports while this job runs: ready for the next one
        over = 0
        while child.poll() is None:
            rss = _rss_bytes(child.pid)
            if cap and rss > cap:
                over = rss
                child.send_signal(signal.SIGKILL)
                child.wait()
                break
            time.sleep(jobs.watchdog_interval_s)
        status = result.read_text().strip() if result.exists() else ""
    finally:
        result.unlink(missing_ok=True)
    if over:
        error = (f"out of memory: the job's process grew to {over >> 20} MiB, past its memory cap of "
                 f"{memory_cap_text(rt.settings)}, and was stopped")
        log.error("job %s: %s", job_id, error)
        return _fail_killed(rt, job_id, attempts_before, error, retry=False)
    if status:
        return status
    code = child.returncode
    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    error = f"the job's worker process {how} before recording an outcome"
    log.error("job %s: %s", job_id, error)
    return _fail_killed(rt, job_id, attempts_before, error, retry=True)


# ----------------------------------------------------------------------------- child
def _exit_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def install_declared(settings: Settings) -> None:
    """Register the architectures the administrator declared in settings (imported when built)."""
    from workers.unlearning.networks import BUILTINS, declare_architecture

    for key, target in settings.architectures.declared.items():
        if key not in BUILTINS:
            declare_architecture(key, target)


def _uses_cuda(rt: Runtime, job_id: uuid.UUID) -> bool:
    from service.models import Model

    with rt.session_factory() as session:
        job = session.get(Job, job_id)
        model = session.get(Model, job.model_id) if job is not None else None
        device = str((model.method_config or {}).get("device", "auto")) if model is not None else "cpu"
    if device.startswith("cuda"):
        return True
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return False


def main(argv: list[str]) -> int:
    _exit_with_parent()
    # imported before the job arrives (a spare waits here): torch and the job code, nothing that
    # reads the job's settings, data or database
    import torch  # noqa: F401

    import workers.execution.run  # noqa: F401

    job, result_name, settings = pickle.loads(sys.stdin.buffer.read())
    job_id, result = uuid.UUID(job), Path(result_name)
    if settings.jobs.nice:
        os.nice(settings.jobs.nice)  # the API (same machine in embedded mode) stays responsive
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s [job %(process)d] %(message)s")
    rt = Runtime.from_settings(settings)
    install_declared(settings)
    limit = settings.jobs.memory_limit_mb << 20
    if limit and settings.jobs.memory_enforcement == "auto" and not _uses_cuda(rt, job_id):
        import resource

        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    from workers.execution.run import run_job

    status = run_job(rt, job_id)
    result.write_text(status)
    rt.engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
