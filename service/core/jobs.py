"""The outbox: tasks are written in the same transaction as the state change that needs them.

The relay (``workers`` side, or the embedded runner) sends unsent rows after commit, by task
name and with ``task_id`` = the job id, so a task sent twice is recognised as the same job.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.models import OutboxMessage

QUEUE_DEFAULT = "default"
QUEUE_GPU = "gpu"


def enqueue(
    session: Session, task_name: str, *, task_id: str, args: list[Any] | None = None, queue: str = QUEUE_DEFAULT
) -> OutboxMessage:
    msg = OutboxMessage(task_name=task_name, task_id=task_id, args=list(args or []), queue=queue)
    session.add(msg)
    return msg
