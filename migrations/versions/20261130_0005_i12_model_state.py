"""models.state / state_reason: a standard model whose uploaded checkpoint fails validation is
``invalid`` with the reason (issue 12)

Revision ID: 0005_i12_model_state
Revises: 0004
Create Date: 2026-11-30 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005_i12_model_state'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('models') as batch:
        batch.add_column(sa.Column('state', sa.String(length=16), nullable=False, server_default='ready'))
        batch.add_column(sa.Column('state_reason', sa.String(length=2000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('models') as batch:
        batch.drop_column('state_reason')
        batch.drop_column('state')
