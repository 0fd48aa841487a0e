"""Runs and session turns, as the services kept them in SQLite before migrations: a file written by an older
Conclave already has these tables, and keeps its rows.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = sa.inspect(op.get_bind()).get_table_names()
    if "runs" not in existing:
        op.create_table(
            "runs",
            sa.Column("run_id", sa.Text, primary_key=True),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("status", sa.Text, nullable=False),
            sa.Column("record", sa.Text, nullable=False))
        op.create_index("runs_by_time", "runs", ["created_at"])
    if "turns" not in existing:
        op.create_table(
            "turns",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("session_id", sa.Text, nullable=False),
            sa.Column("persona", sa.Text, nullable=False),
            sa.Column("role", sa.Text, sa.CheckConstraint("role IN ('user', 'assistant')"), nullable=False),
            sa.Column("content", sa.Text, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False))
        op.create_index("turns_by_session", "turns", ["persona", "session_id", "id"])
        op.create_index("turns_by_time", "turns", ["created_at"])


def downgrade() -> None:
    op.drop_table("turns")
    op.drop_table("runs")
