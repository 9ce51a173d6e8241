"""models.family: what the user brought (mixed_linear | linear_head | standard; DESIGN §6.8)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every model registered before families existed is a mixed-linear one.
    with op.batch_alter_table('models') as batch:
        batch.add_column(sa.Column('family', sa.String(length=32), nullable=False, server_default='mixed_linear'))


def downgrade() -> None:
    with op.batch_alter_table('models') as batch:
        batch.drop_column('family')
