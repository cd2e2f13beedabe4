"""The dispatcher's columns on samsweep_studies: priority, max_concurrent_trials (from the
spec) and dispatched_at (when the study was last sent a trial: round robin).

Existing studies take their values from their stored spec (absent there: 0 and no bound).

Revision ID: 0005
Revises: 0004
Create Date: 2027-02-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE on SQLite too (3.35+), never a batch copy of the table: dropping
    # samsweep_studies to recreate it would cascade to its trials (as 0004 explains).
    table = "samsweep_studies"
    op.add_column(table, sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    op.add_column(table, sa.Column("max_concurrent_trials", sa.Integer(), nullable=True))
    op.add_column(table, sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
    studies = sa.table(
        "samsweep_studies",
        sa.column("id", sa.String),
        sa.column("spec", sa.JSON),
        sa.column("priority", sa.Integer),
        sa.column("max_concurrent_trials", sa.Integer),
    )
    bind = op.get_bind()
    for study_id, spec in bind.execute(sa.select(studies.c.id, studies.c.spec)).all():
        priority, bound = spec.get("priority", 0), spec.get("max_concurrent_trials")
        if priority or bound is not None:
            bind.execute(
                studies.update()
                .where(studies.c.id == study_id)
                .values(priority=priority, max_concurrent_trials=bound)
            )


def downgrade() -> None:
    for column in ("dispatched_at", "max_concurrent_trials", "priority"):
        op.drop_column("samsweep_studies", column)
