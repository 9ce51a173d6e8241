"""Embedded mode: a real Celery worker in this process over the in-memory transport, plus a
ticker doing beat's work (schedule, relay the outbox, sweep). No Postgres, no Redis.

The worker thread never computes a job itself: the ``job.run`` task starts a child process per
job (:mod:`workers.execution.isolation`, from the database by job id) under the memory cap of
``settings.jobs``, so a job that runs out of memory fails alone and the API keeps answering."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from service.core.config import Settings
from service.core.db import scrub_deleted
from service.job import service as job_service
from workers.celery_app import make_celery
from workers.runtime import runtime_for

log = logging.getLogger("lethe.embedded")


class EmbeddedRunner:
    def __init__(self, settings: Settings, tick_s: float = 1.0) -> None:
        self.settings = settings
        self.app = make_celery(settings)
        self.app.loader.import_default_modules()
        self.tick_s = tick_s
        self._stop = threading.Event()
        self._stack = contextlib.ExitStack()
        self._threads: list[threading.Thread] = []

    def start(self) -> "EmbeddedRunner":
        from celery.contrib.testing.worker import start_worker

        self._stack.enter_context(
            start_worker(self.app, pool="solo", concurrency=1, perform_ping_check=False, shutdown_timeout=30.0,
                         queues=["default", "gpu"], loglevel="WARNING")
        )
        for target, name in ((self._tick, "lethe-ticker"), (self._deliver, "lethe-webhooks")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _deliver(self) -> None:
        """Webhook deliveries in a thread of their own: a slow receiver never delays the ticker."""
        from service.webhook.delivery import run_once

        rt = runtime_for(self.app)
        while not self._stop.wait(rt.settings.webhooks.interval_s):
            try:
                run_once(rt.session_factory, rt.settings)
            except Exception:  # noqa: BLE001 - keep delivering; the database holds the truth
                log.exception("embedded webhook round failed")

    def _tick(self) -> None:
        from workers.execution.sweeper import sweep
        from workers.relay import relay_outbox

        rt = runtime_for(self.app)
        last_sweep = 0.0
        # A crash between an erasing commit and its scrub leaves old page images in the WAL:
        # scrub once at start, then whenever an erasing commit (API, ticker) asks for it.
        scrub_deleted(rt.engine, force=True)
        while not self._stop.wait(self.tick_s):
            try:
                with rt.session_factory.begin() as session:
                    job_service.schedule(session, rt.settings)
                relay_outbox(rt.session_factory, self.app.send_task)
                if time.monotonic() - last_sweep > 15:
                    last_sweep = time.monotonic()
                    sweep(rt)
                    relay_outbox(rt.session_factory, self.app.send_task)
                scrub_deleted(rt.engine)
            except Exception:  # noqa: BLE001 - keep ticking; the database holds the truth
                log.exception("embedded ticker round failed")

    def start_demo(self, base_url: str, token: str) -> None:
        from workers import demo

        def go() -> None:
            demo.wait_healthy(base_url)
            try:
                demo.run(base_url, token)
            except Exception:  # noqa: BLE001
                log.exception("demo failed")

        t = threading.Thread(target=go, name="lethe-demo", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._stack.close()


def start(settings: Settings) -> EmbeddedRunner:
    return EmbeddedRunner(settings).start()
