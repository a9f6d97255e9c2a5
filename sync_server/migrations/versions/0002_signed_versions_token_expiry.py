"""signed version records, idempotent publish, token expiry

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("catalog_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("record_signature", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=128), nullable=True))
        batch_op.create_unique_constraint("uq_version_idempotency_key", ["catalog_id", "idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("catalog_versions", schema=None) as batch_op:
        batch_op.drop_constraint("uq_version_idempotency_key", type_="unique")
        batch_op.drop_column("idempotency_key")
        batch_op.drop_column("record_signature")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
