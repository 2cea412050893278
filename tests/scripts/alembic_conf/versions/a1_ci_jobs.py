"""create ci_jobs"""
import sqlalchemy as sa
from alembic import op

revision = "a1"
down_revision = None


def upgrade():
    op.create_table(
        "ci_jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("deploy_token", sa.String(80)),
    )
    op.bulk_insert(
        sa.table("ci_jobs", sa.column("id"), sa.column("name"), sa.column("deploy_token")),
        [{"id": 1, "name": "deploy", "deploy_token": "dt-0a1b2c3d"}],
    )


def downgrade():
    op.drop_table("ci_jobs")
