"""webhooks, OpenDSR requests, stop the line, SLA extension (issue 19)

Revision ID: 0006_i19_webhooks
Revises: 0005_i12_model_state
Create Date: 2026-11-30 16:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0006_i19_webhooks'
down_revision: str | None = '0005_i12_model_state'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
BIGINT = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('webhook_subscriptions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.Integer(), nullable=False),
    sa.Column('url', sa.String(length=2000), nullable=False),
    sa.Column('event_types', JSON, nullable=False),
    sa.Column('description', sa.String(length=200), nullable=True),
    sa.Column('secret_sealed', sa.Text(), nullable=False),
    sa.Column('all_clients', sa.Boolean(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.Column('updated_at', TS, nullable=False),
    sa.ForeignKeyConstraint(['client_id'], ['clients.id']),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_webhook_subscriptions_client_id'), 'webhook_subscriptions', ['client_id'], unique=False)
    op.create_table('webhook_events',
    sa.Column('id', BIGINT, autoincrement=True, nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.Integer(), nullable=True),
    sa.Column('data', JSON, nullable=False),
    sa.Column('created_at', TS, nullable=False),
    sa.Column('fanned_out_at', TS, nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_webhook_events_fanned_out_at'), 'webhook_events', ['fanned_out_at'], unique=False)
    op.create_table('webhook_deliveries',
    sa.Column('id', BIGINT, autoincrement=True, nullable=False),
    sa.Column('message_id', sa.String(length=64), nullable=False),
    sa.Column('event_id', BIGINT, nullable=False),
    sa.Column('subscription_id', sa.Integer(), nullable=True),
    sa.Column('format', sa.String(length=16), nullable=False),
    sa.Column('url', sa.String(length=2000), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', TS, nullable=True),
    sa.Column('lease_until', TS, nullable=True),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_latency_ms', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('delivered_at', TS, nullable=True),
    sa.Column('created_at', TS, nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['webhook_events.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['subscription_id'], ['webhook_subscriptions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_id')
    )
    op.create_index('ix_webhook_deliveries_due', 'webhook_deliveries', ['status', 'next_attempt_at'], unique=False)
    op.create_index(op.f('ix_webhook_deliveries_event_id'), 'webhook_deliveries', ['event_id'], unique=False)
    op.create_index(op.f('ix_webhook_deliveries_subscription_id'), 'webhook_deliveries', ['subscription_id'], unique=False)
    op.create_table('webhook_attempts',
    sa.Column('id', BIGINT, autoincrement=True, nullable=False),
    sa.Column('delivery_id', BIGINT, nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('at', TS, nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('latency_ms', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['delivery_id'], ['webhook_deliveries.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_webhook_attempts_delivery_id'), 'webhook_attempts', ['delivery_id'], unique=False)
    op.create_table('opendsr_requests',
    sa.Column('subject_request_id', sa.Uuid(), nullable=False),
    sa.Column('client_id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.Uuid(), nullable=False),
    sa.Column('status_callback_urls', JSON, nullable=False),
    sa.Column('regulation', sa.String(length=16), nullable=False),
    sa.Column('submitted_time', TS, nullable=False),
    sa.Column('received_time', TS, nullable=False),
    sa.ForeignKeyConstraint(['client_id'], ['clients.id']),
    sa.ForeignKeyConstraint(['request_id'], ['deletion_requests.id']),
    sa.PrimaryKeyConstraint('subject_request_id')
    )
    op.create_index(op.f('ix_opendsr_requests_client_id'), 'opendsr_requests', ['client_id'], unique=False)
    op.create_index(op.f('ix_opendsr_requests_request_id'), 'opendsr_requests', ['request_id'], unique=False)
    with op.batch_alter_table('deletion_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('extended_at', TS, nullable=True))
        batch_op.add_column(sa.Column('extended_by', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('extension_reason', sa.Text(), nullable=True))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('acknowledged_at', TS, nullable=True))
        batch_op.add_column(sa.Column('acknowledged_by', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('acknowledge_reason', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('acknowledge_reason')
        batch_op.drop_column('acknowledged_by')
        batch_op.drop_column('acknowledged_at')
    with op.batch_alter_table('deletion_requests', schema=None) as batch_op:
        batch_op.drop_column('extension_reason')
        batch_op.drop_column('extended_by')
        batch_op.drop_column('extended_at')
    op.drop_index(op.f('ix_opendsr_requests_request_id'), table_name='opendsr_requests')
    op.drop_index(op.f('ix_opendsr_requests_client_id'), table_name='opendsr_requests')
    op.drop_table('opendsr_requests')
    op.drop_index(op.f('ix_webhook_attempts_delivery_id'), table_name='webhook_attempts')
    op.drop_table('webhook_attempts')
    op.drop_index(op.f('ix_webhook_deliveries_subscription_id'), table_name='webhook_deliveries')
    op.drop_index(op.f('ix_webhook_deliveries_event_id'), table_name='webhook_deliveries')
    op.drop_index('ix_webhook_deliveries_due', table_name='webhook_deliveries')
    op.drop_table('webhook_deliveries')
    op.drop_index(op.f('ix_webhook_events_fanned_out_at'), table_name='webhook_events')
    op.drop_table('webhook_events')
    op.drop_index(op.f('ix_webhook_subscriptions_client_id'), table_name='webhook_subscriptions')
    op.drop_table('webhook_subscriptions')
