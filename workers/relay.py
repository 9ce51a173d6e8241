"""The outbox relay: tasks are sent only after the transaction that needs them committed."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.models import OutboxMessage
from service.models._types import utcnow

log = logging.getLogger("lethe.relay")


def relay_outbox(session_factory: sessionmaker[Session], send: Callable[..., object], batch: int = 100) -> int:
    """Send unsent messages (row-locked, ``SKIP LOCKED``, so relays may run concurrently) and
    mark them sent. A crash between send and commit re-sends: the task id is the job id and the
    task checks the job's state, so a duplicate is harmless."""
    sent = 0
    with session_factory.begin() as session:
        q = select(OutboxMessage).where(OutboxMessage.sent_at.is_(None)).order_by(OutboxMessage.id).limit(batch)
        if session.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        for msg in session.execute(q).scalars():
            try:
                send(msg.task_name, args=list(msg.args), task_id=msg.task_id, queue=msg.queue)
            except Exception as exc:  # noqa: BLE001 - broker down: keep it for the next round
                msg.attempts += 1
                msg.last_error = f"{type(exc).__name__}: {exc}"[:1000]
                log.warning("outbox send failed for %s %s: %s", msg.task_name, msg.task_id, type(exc).__name__)
                break
            msg.sent_at = utcnow()
            msg.attempts += 1
            sent += 1
    return sent
