"""Alembic's environment: upgrades run on the connection common/database.py hands over (under its lock)."""

from alembic import context

from common.database import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata,
                  render_as_batch=True)  # SQLite alters tables by copying them: batch mode does that
with context.begin_transaction():
    context.run_migrations()
