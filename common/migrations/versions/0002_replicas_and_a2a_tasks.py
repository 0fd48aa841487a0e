"""Replicas: each run names the replica running it, and replicas say they are alive, so one replica's crash sweep
fails only the runs of replicas that stopped. A2A tasks move into this database: the SDK's task, version and event
tables (its cluster store, which lets any replica read, continue and cancel a task another one started), created
from the SDK's own models.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from a2a.server.models import Base, TaskEventModel, TaskModel, TaskVersionModel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

A2A_TABLES = [TaskModel.__table__, TaskVersionModel.__table__, TaskEventModel.__table__]


def upgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        runs.add_column(sa.Column("owner", sa.Text))
    op.create_index("runs_running", "runs", ["status", "owner"])
    op.create_table(
        "replicas",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("seen_at", sa.Float, nullable=False))
    Base.metadata.create_all(op.get_bind(), tables=A2A_TABLES)


def downgrade() -> None:
    Base.metadata.drop_all(op.get_bind(), tables=A2A_TABLES)
    op.drop_table("replicas")
    op.drop_index("runs_running", "runs")
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("owner")
