"""A trial's per-epoch records as rows of samsweep_trial_epochs, not a JSON array.

The worker rewrote the whole `samsweep_trials.curves` array on every epoch, so an
epoch's write grew with the epochs before it: at epoch 10 000, 215 ms and half a
megabyte of database log for one epoch, ~18 minutes and 2.4 GB for the trial. Each
epoch is now one row, appended (samsweep.core.db.TrialEpoch). The upgrade moves every
existing array into rows and drops the column; the downgrade puts the arrays back.

Dropping a column on SQLite is `ALTER TABLE ... DROP COLUMN` (SQLite 3.35+), not a
batch copy of the table: recreating samsweep_trials would cascade its DROP to rows
that reference it.

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-10
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    op.create_table(
        "samsweep_trial_epochs",
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("record", JSON, nullable=False),
        sa.ForeignKeyConstraint(["trial_id"], ["samsweep_trials.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("trial_id", "epoch"),
    )
    # Each element of each array becomes its row, keyed by the element's own epoch (the
    # recorder kept one per epoch; should an array hold one twice, the first is kept).
    if _postgresql():
        op.execute(
            "INSERT INTO samsweep_trial_epochs (trial_id, epoch, record)"
            " SELECT t.id, (e.value->>'epoch')::int, e.value"
            " FROM samsweep_trials t, jsonb_array_elements(t.curves) WITH ORDINALITY e"
            " WHERE jsonb_typeof(t.curves) = 'array' ORDER BY t.id, e.ordinality"
            " ON CONFLICT DO NOTHING"
        )
    else:
        op.execute(
            "INSERT OR IGNORE INTO samsweep_trial_epochs (trial_id, epoch, record)"
            " SELECT t.id, json_extract(e.value, '$.epoch'), e.value"
            " FROM samsweep_trials t, json_each(t.curves) e"
            " WHERE json_type(t.curves) = 'array' ORDER BY t.id, e.key"
        )
    op.drop_column("samsweep_trials", "curves")


def downgrade() -> None:
    # NOT NULL needs a default for the existing rows (SQLite refuses it otherwise)
    op.add_column(
        "samsweep_trials",
        sa.Column("curves", JSON, nullable=False, server_default=sa.text("'[]'")),
    )
    if _postgresql():
        op.execute(
            "UPDATE samsweep_trials t SET curves = e.curves FROM ("
            " SELECT trial_id, jsonb_agg(record ORDER BY epoch) AS curves"
            " FROM samsweep_trial_epochs GROUP BY trial_id) e WHERE e.trial_id = t.id"
        )
        op.alter_column("samsweep_trials", "curves", server_default=None)  # as 0001 made it
    else:
        op.execute(
            "UPDATE samsweep_trials SET curves = ("
            " SELECT json_group_array(json(record)) FROM ("
            " SELECT record FROM samsweep_trial_epochs e"
            " WHERE e.trial_id = samsweep_trials.id ORDER BY e.epoch))"
            " WHERE id IN (SELECT trial_id FROM samsweep_trial_epochs)"
        )
    op.drop_table("samsweep_trial_epochs")
