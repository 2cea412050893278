from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

config = context.config
fileConfig(config.config_file_name)

# What the migrations build: `alembic check` compares it with the database.
target_metadata = sa.MetaData()
sa.Table(
    "ci_jobs",
    target_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(80), nullable=False),
    sa.Column("deploy_token", sa.String(80)),
)

engine = sa.create_engine("postgresql+psycopg://", poolclass=sa.pool.NullPool)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # The database holds other tests' tables too: compare ours only.
        include_name=lambda name, type_, _: type_ != "table" or name in target_metadata.tables,
    )
    with context.begin_transaction():
        context.run_migrations()
