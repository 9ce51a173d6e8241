"""The outbox: tasks are written in the same transaction as the state change that needs them.

The relay (``workers`` side, or the embedded runner) sends unsent rows after commit, by task
name and with ``task_id`` = the job id, so a task sent twice is recognised as the same job.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
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


def enqueued_since(session: Session, task_id_prefix: str, since: datetime) -> bool:
    """Whether a message whose task id starts with ``task_id_prefix`` was written after ``since``."""
    return session.execute(
        select(OutboxMessage.id).where(OutboxMessage.task_id.startswith(task_id_prefix), OutboxMessage.created_at > since).limit(1)
    ).first() is not None


def delete_sent_before(session: Session, cutoff: datetime) -> None:
    session.execute(delete(OutboxMessage).where(OutboxMessage.sent_at < cutoff))
