"""The service's tables: studies and their trials (one row per grid cell and seed).

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "samsweep_studies",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("optuna_study_name", sa.String(length=100), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("optuna_study_name"),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_study_idempotency"),
    )
    op.create_index("ix_samsweep_studies_created_at", "samsweep_studies", ["created_at"])
    op.create_index("ix_samsweep_studies_owner", "samsweep_studies", ["owner"])

    op.create_table(
        "samsweep_trials",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_id", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("cell_key", sa.String(length=300), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("params", JSON, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claim_token", sa.String(length=32), nullable=True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("optuna_trial_id", sa.Integer(), nullable=True),
        sa.Column("optuna_trial_number", sa.Integer(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("metrics", JSON, nullable=True),
        sa.Column("curves", JSON, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["study_id"], ["samsweep_studies.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_id", "cell_key", "seed", name="uq_trial_cell_seed"),
        sa.UniqueConstraint("study_id", "number", name="uq_trial_number"),
    )
    op.create_index("ix_samsweep_trials_state", "samsweep_trials", ["state"])


def downgrade() -> None:
    op.drop_index("ix_samsweep_trials_state", "samsweep_trials")

    op.drop_table("samsweep_trials")
    op.drop_index("ix_samsweep_studies_owner", "samsweep_studies")
    op.drop_index("ix_samsweep_studies_created_at", "samsweep_studies")

    op.drop_table("samsweep_studies")
