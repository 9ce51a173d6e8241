"""clients own tokens and requests; keyed audit chain and signed checkpoints (issue 9)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 13:40:00

* ``clients``; every existing token gets a client of its own (``token-<id>``), so nothing is
  orphaned; ``api_tokens.client_id`` is then NOT NULL.
* ``deletion_requests.client_id`` (NULL for requests filed before clients existed: only admins,
  operators and auditors see those); ``idempotency_key`` widened to hold the client prefix.
* ``audit_events.key_id`` (NULL = an event of the old unkeyed chain) and ``audit_checkpoints``.
  The old chain is re-linked with the HMAC key at the first start of the API, not here: the
  key lives in settings, never in the database (see ``service.audit.service.rekey_legacy_chain``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "clients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", _BIGINT, autoincrement=True, nullable=False),
        sa.Column("seq", _BIGINT, nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_checkpoints", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_checkpoints_seq"), ["seq"], unique=False)

    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_id", sa.Integer(), nullable=True))
    op.execute(
        "INSERT INTO clients (name, created_at) SELECT 'token-' || CAST(id AS VARCHAR), created_at FROM api_tokens"
    )
    op.execute(
        "UPDATE api_tokens SET client_id = "
        "(SELECT clients.id FROM clients WHERE clients.name = 'token-' || CAST(api_tokens.id AS VARCHAR))"
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.alter_column("client_id", existing_type=sa.Integer(), nullable=False)
        batch_op.create_index(batch_op.f("ix_api_tokens_client_id"), ["client_id"], unique=False)
        batch_op.create_foreign_key("fk_api_tokens_client_id", "clients", ["client_id"], ["id"])

    with op.batch_alter_table("deletion_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_id", sa.Integer(), nullable=True))
        batch_op.alter_column(
            "idempotency_key", existing_type=sa.String(length=200), type_=sa.String(length=220), existing_nullable=True
        )
        batch_op.create_index(batch_op.f("ix_deletion_requests_client_id"), ["client_id"], unique=False)
        batch_op.create_foreign_key("fk_deletion_requests_client_id", "clients", ["client_id"], ["id"])

    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    # Note: a chain re-linked with the HMAC key stays keyed; the old unkeyed verifier would
    # report it broken. Downgrade is for development, not for going back in production.
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_column("key_id")
    with op.batch_alter_table("deletion_requests", schema=None) as batch_op:
        batch_op.drop_constraint("fk_deletion_requests_client_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_deletion_requests_client_id"))
        batch_op.alter_column(
            "idempotency_key", existing_type=sa.String(length=220), type_=sa.String(length=200), existing_nullable=True
        )
        batch_op.drop_column("client_id")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_constraint("fk_api_tokens_client_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_api_tokens_client_id"))
        batch_op.drop_column("client_id")
    with op.batch_alter_table("audit_checkpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_checkpoints_seq"))
    op.drop_table("audit_checkpoints")
    op.drop_table("clients")
