"""Idempotency keys in their own table, keyed by (owner, key), '' for an open API.

The unique constraint on samsweep_studies (owner, idempotency_key) did not hold on an
open API: owner is NULL there, and NULLs never collide, so concurrent requests with one
key all created studies. A new table needs no change to the studies table (on SQLite
that would mean recreating it, whose DROP would cascade to every trial).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "samsweep_idempotency_keys",
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("study_id", sa.String(length=32), nullable=False),
        sa.Column("request_digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["samsweep_studies.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("owner", "key"),
    )
    # Keys studies were created with before this table existed keep answering replays,
    # each with the first study made under it (the old race may have made several).
    # Their bodies were never recorded: an empty digest, which service/studies.py treats
    # as "cannot compare" and answers with the study, as before.
    op.execute(
        "INSERT INTO samsweep_idempotency_keys (owner, key, study_id, request_digest, created_at)"
        " SELECT COALESCE(s.owner, ''), s.idempotency_key, s.id, '', s.created_at"
        " FROM samsweep_studies s WHERE s.idempotency_key IS NOT NULL AND NOT EXISTS ("
        " SELECT 1 FROM samsweep_studies t WHERE t.idempotency_key = s.idempotency_key"
        " AND COALESCE(t.owner, '') = COALESCE(s.owner, '')"
        " AND (t.created_at < s.created_at OR (t.created_at = s.created_at AND t.id < s.id)))"
    )


def downgrade() -> None:
    op.drop_table("samsweep_idempotency_keys")
