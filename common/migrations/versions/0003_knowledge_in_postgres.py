"""The experts' knowledge bases in Postgres (pgvector): one set of tables for every persona, keyed by persona, made
here instead of by each store at start-up. Tables an older Conclave made per persona (knowledge_<persona>_...) are
copied in and left in place, so replicas of the older version still serving during a rolling upgrade keep working
(a later revision drops them). On SQLite nothing: there each expert keeps its sqlite-vec file in DATA_DIR.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DIMENSIONS = 384  # the embedders' (all-MiniLM-L6-v2 and multilingual-e5-small) as of this revision
OLD = re.compile(r"knowledge_(.+)_documents")

CREATE = [
    "CREATE EXTENSION IF NOT EXISTS vector",
    """CREATE TABLE knowledge_documents (
        persona TEXT NOT NULL, id TEXT NOT NULL, source TEXT NOT NULL, title TEXT NOT NULL, sha256 TEXT NOT NULL,
        chunks INTEGER NOT NULL, bytes INTEGER NOT NULL, added_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (persona, id), UNIQUE (persona, source))""",
    f"""CREATE TABLE knowledge_chunks (
        id BIGSERIAL PRIMARY KEY, persona TEXT NOT NULL, document_id TEXT NOT NULL, ord INTEGER NOT NULL,
        lead TEXT NOT NULL, body TEXT NOT NULL, embedding vector({DIMENSIONS}) NOT NULL,
        FOREIGN KEY (persona, document_id) REFERENCES knowledge_documents (persona, id) ON DELETE CASCADE)""",
    "CREATE INDEX knowledge_chunks_by_document ON knowledge_chunks (persona, document_id)",
    "CREATE INDEX knowledge_chunks_by_vector ON knowledge_chunks USING hnsw (embedding vector_cosine_ops)",
    """CREATE TABLE knowledge_meta (
        persona TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (persona, key))""",
]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for statement in CREATE:
        op.execute(statement)
    for table in sorted(existing):
        match = OLD.fullmatch(table)
        if not match or {f"knowledge_{match.group(1)}_{t}" for t in ("chunks", "meta")} - existing:
            continue
        persona, old = match.group(1), f"knowledge_{match.group(1)}_"
        params = {"persona": persona}
        op.get_bind().execute(sa.text(
            f'INSERT INTO knowledge_documents SELECT :persona, id, source, title, sha256, chunks, bytes, added_at '
            f'FROM "{old}documents"'), params)
        op.get_bind().execute(sa.text(
            f'INSERT INTO knowledge_chunks (persona, document_id, ord, lead, body, embedding) '
            f'SELECT :persona, document_id, ord, lead, body, embedding FROM "{old}chunks" ORDER BY id'), params)
        op.get_bind().execute(sa.text(
            f'INSERT INTO knowledge_meta SELECT :persona, key, value FROM "{old}meta"'), params)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in ("knowledge_chunks", "knowledge_meta", "knowledge_documents"):
            op.drop_table(table)
