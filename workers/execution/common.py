"""What the execution steps share (so that ``run`` and ``publish`` need not import each other)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from service.core.config import Settings
from service.models import Job

# Test hooks: name -> callable run at that point ("solve", "after_solve", "before_publish",
# "publish_before_commit"). Fault injection in the test suite only; empty in production.
HOOKS: dict[str, Callable[[Job], None]] = {}

PRIVATE_PREFIX = "private"
WEIGHTS_PREFIX = "weights"


def hook(name: str, job: Job) -> None:
    fn = HOOKS.get(name)
    if fn is not None:
        fn(job)


class JobAbandoned(Exception):
    """The job row says another attempt owns it, or it is no longer runnable."""


def json_safe(value: Any) -> Any:
    """JSON (and JSONB) safe: non-finite floats become "inf"/"-inf"/"nan", numpy scalars plain."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return str(value)


def touch(rt: Any, uri: str) -> None:
    """Refresh the mtime of a content-addressed file we just (re)wrote: when identical content
    already existed, the store kept the old file, and the orphan sweeper judges age by mtime."""
    rt.store.touch(uri)


_OOM_TEXT = ("can't allocate memory", "cannot allocate memory", "out of memory", "unable to allocate")


def memory_cap_text(settings: Settings) -> str:
    return f"{settings.jobs.memory_limit_mb} MiB (LETHE_JOBS__MEMORY_LIMIT_MB)"


def out_of_memory(exc: BaseException, settings: Settings) -> str | None:
    """The failure message when ``exc`` is an allocation refused under the memory cap, else None."""
    msg = str(exc)
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(t in msg.lower() for t in _OOM_TEXT)):
        first = msg.strip().splitlines()[0][:300] if msg.strip() else type(exc).__name__
        cap = memory_cap_text(settings) if settings.jobs.memory_limit_mb else "the machine's memory"
        return f"out of memory: the job needed more than its memory cap of {cap} ({type(exc).__name__}: {first})"
    return None
