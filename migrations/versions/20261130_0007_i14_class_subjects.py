"""class subjects (issue 14): models.subjects_are_classes, the label -> subject mapping
(class_subjects, subject keys only), forgotten-class tombstones (class_tombstones), and the
request's kind (samples | class) and forgotten_classes (the receipt)

Revision ID: 0007_i14_class_subjects
Revises: 0006_i19_webhooks
Create Date: 2026-11-30 19:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0007_i14_class_subjects'
down_revision: str | None = '0006_i19_webhooks'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
BIGINT = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table('models') as batch:
        batch.add_column(sa.Column('subjects_are_classes', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('deletion_requests') as batch:
        batch.add_column(sa.Column('kind', sa.String(length=16), nullable=False, server_default='samples'))
        batch.add_column(sa.Column('forgotten_classes', JSON, nullable=True))
    op.create_table('class_subjects',
    sa.Column('id', BIGINT, autoincrement=True, nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.Integer(), nullable=False),
    sa.Column('subject_key', sa.String(length=64), nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('model_id', 'label', name='uq_class_subjects_model_label'),
    sa.UniqueConstraint('model_id', 'subject_key', name='uq_class_subjects_model_subject')
    )
    op.create_index(op.f('ix_class_subjects_subject_key'), 'class_subjects', ['subject_key'], unique=False)
    op.create_table('class_tombstones',
    sa.Column('id', BIGINT, autoincrement=True, nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.Integer(), nullable=False),
    sa.Column('subject_key', sa.String(length=64), nullable=True),
    sa.Column('deleted_at', TS, nullable=False),
    sa.Column('version_number', sa.Integer(), nullable=True),
    sa.Column('request_id', sa.Uuid(), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['request_id'], ['deletion_requests.id']),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('model_id', 'label', name='uq_class_tombstones_model_label')
    )


def downgrade() -> None:
    op.drop_table('class_tombstones')
    op.drop_index(op.f('ix_class_subjects_subject_key'), table_name='class_subjects')
    op.drop_table('class_subjects')
    with op.batch_alter_table('deletion_requests') as batch:
        batch.drop_column('forgotten_classes')
        batch.drop_column('kind')
    with op.batch_alter_table('models') as batch:
        batch.drop_column('subjects_are_classes')
