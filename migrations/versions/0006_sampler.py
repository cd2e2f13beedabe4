"""The study's sampler on samsweep_studies (from the spec): NULL for a grid, else the name
of the Optuna sampler that draws its configurations one at a time (service/dispatch.py
asks only those studies for new ones). Existing studies are grids.

Revision ID: 0006
Revises: 0005
Create Date: 2027-03-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE on SQLite too, never a batch copy (see 0005).
    op.add_column("samsweep_studies", sa.Column("sampler", sa.String(16), nullable=True))


def downgrade() -> None:
    op.drop_column("samsweep_studies", "sampler")
