"""Vendors, anchors, vendor CRLs, devices, credentials, PINs.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('credentials',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('reference', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('device_serial', sa.String(length=128), nullable=True),
    sa.Column('batch', sa.String(length=64), nullable=True),
    sa.Column('profile', sa.String(length=64), nullable=True),
    sa.Column('sealed_secret', sa.LargeBinary(), nullable=True),
    sa.Column('password_hash', sa.String(length=256), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('max_uses', sa.Integer(), nullable=True),
    sa.Column('uses', sa.Integer(), nullable=False),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('reference')
    )
    op.create_index('ix_credentials_batch', 'credentials', ['batch'], unique=False)
    op.create_index('ix_credentials_device', 'credentials', ['device_serial'], unique=False)
    op.create_table('devices',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('serial', sa.String(length=128), nullable=False),
    sa.Column('vendor', sa.String(length=64), nullable=True),
    sa.Column('model', sa.String(length=128), nullable=True),
    sa.Column('mac', sa.String(length=32), nullable=True),
    sa.Column('imei', sa.String(length=32), nullable=True),
    sa.Column('hnb_id', sa.String(length=64), nullable=True),
    sa.Column('tenant', sa.String(length=64), nullable=True),
    sa.Column('profile', sa.String(length=64), nullable=True),
    sa.Column('public_key', sa.LargeBinary(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('blocked_reason', sa.String(length=64), nullable=True),
    sa.Column('blocked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('serial')
    )
    op.create_index('ix_devices_hnb_id', 'devices', ['hnb_id'], unique=False)
    op.create_index('ix_devices_imei', 'devices', ['imei'], unique=False)
    op.create_index('ix_devices_mac', 'devices', ['mac'], unique=False)
    op.create_index('ix_devices_vendor', 'devices', ['vendor'], unique=False)
    op.create_table('pins',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_serial', sa.String(length=128), nullable=False),
    sa.Column('pin_hash', sa.String(length=256), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_pins_device', 'pins', ['device_serial'], unique=False)
    op.create_table('vendors',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('vendor_anchors',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('vendor_id', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('certificate', sa.LargeBinary(), nullable=False),
    sa.Column('added_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['vendor_id'], ['vendors.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('fingerprint')
    )
    op.create_table('vendor_crls',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('vendor_id', sa.Integer(), nullable=False),
    sa.Column('issuer_key_id', sa.String(length=128), nullable=False),
    sa.Column('issuer', sa.Text(), nullable=False),
    sa.Column('crl_number', sa.BigInteger(), nullable=True),
    sa.Column('this_update', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_update', sa.DateTime(timezone=True), nullable=True),
    sa.Column('der', sa.LargeBinary(), nullable=False),
    sa.Column('loaded_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['vendor_id'], ['vendors.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('vendor_id', 'issuer_key_id', name='uq_vendor_crls_issuer')
    )


def downgrade() -> None:
    op.drop_table('vendor_crls')
    op.drop_table('vendor_anchors')
    op.drop_table('vendors')
    op.drop_index('ix_pins_device', table_name='pins')
    op.drop_table('pins')
    op.drop_index('ix_devices_vendor', table_name='devices')
    op.drop_index('ix_devices_mac', table_name='devices')
    op.drop_index('ix_devices_imei', table_name='devices')
    op.drop_index('ix_devices_hnb_id', table_name='devices')
    op.drop_table('devices')
    op.drop_index('ix_credentials_device', table_name='credentials')
    op.drop_index('ix_credentials_batch', table_name='credentials')
    op.drop_table('credentials')
