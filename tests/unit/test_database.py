"""The services' database: migrations, runs and sessions on SQLite and on a real Postgres (pgserver, marker
``servers``), the crash sweep across replicas, and A2A tasks shared by two replicas."""

from __future__ import annotations

import sqlite3
import time
import uuid

import pytest
import sqlalchemy as sa

from agents.sessions import SessionStore
from common.database import Database, UnusableDatabase, file_url, sync_url
from common.protocol import RunRecord
from orchestrator.runs import GONE_AFTER_S, RunStore


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.servers)])
def url(request, tmp_path):
    """A fresh database on each engine: the same tests hold for SQLite and Postgres."""
    if request.param == "sqlite":
        return file_url(tmp_path / "state.sqlite3")
    return fresh_database(request.getfixturevalue("postgres"))


def fresh_database(server: str) -> str:
    """A new, empty database on the pgserver Postgres."""
    name = f"t{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(sync_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as db:
        db.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return server.replace("/postgres?", f"/{name}?", 1)


HEAD = "0003"


def run(run_id, age_days=0.0, status="done"):
    return RunRecord(response="", run_id=run_id, strategy="react", experts=[], steps=[], elapsed_ms=0, task="t",
                     created_at=time.time() - age_days * 86400, status=status)


def test_migrations_make_every_table_and_opening_again_changes_nothing(url):
    db = Database(url)
    tables = set(sa.inspect(db.engine).get_table_names())
    assert {"runs", "turns", "replicas", "tasks", "task_versions", "task_events", "alembic_version"} <= tables
    Database(url)  # the next start (or another replica) finds the newest revision and does nothing
    with db.read() as c:
        assert c.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == HEAD


def test_a_database_written_before_migrations_keeps_its_runs_and_sessions(tmp_path):
    """A file from before migrations existed (the tables made by hand) is adopted: its rows stay, new columns come."""
    path = tmp_path / "runs.sqlite3"
    with sqlite3.connect(path) as old:
        old.executescript("""
            CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at REAL NOT NULL, status TEXT NOT NULL,
                               record TEXT NOT NULL);
            CREATE TABLE turns (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL, persona TEXT NOT NULL,
                                role TEXT NOT NULL, content TEXT NOT NULL, created_at REAL NOT NULL);""")
        old.execute("INSERT INTO runs VALUES ('old', 1, 'done', ?)", (run("old").model_dump_json(),))
        old.execute("INSERT INTO turns (session_id, persona, role, content, created_at) "
                    "VALUES ('s', 'p', 'user', 'hello', 1)")
    db = Database(file_url(path))
    assert RunStore(db, "here:5002").get("old").run_id == "old"
    assert [t.content for t in SessionStore(db).history("p", "s")] == ["hello"]


def test_a_damaged_database_is_named_with_what_to_do(tmp_path):
    path = tmp_path / "runs.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UnusableDatabase, match="runs.sqlite3 is not a usable SQLite database.*move it aside"):
        Database(file_url(path))


def test_runs_left_running_by_a_crash_are_failed_when_the_replica_starts_again(url):
    store = RunStore(Database(url), "host-a:5002")
    store.save(run("r1", status="running"))
    again = RunStore(Database(url), "host-a:5002")  # the same replica starting again
    record = again.get("r1")
    assert record.status == "failed" and "interrupted" in record.error


def test_a_replica_never_fails_a_live_replicas_run_and_fails_a_gone_ones(url):
    """Two replicas on one database: starting, or beating, B leaves A's running run alone while A beats; once A
    has been silent for GONE_AFTER_S, B's next beat fails A's run, with the reason."""
    a = RunStore(Database(url), "host-a:5002")
    a.beat()
    a.save(run("a-live", status="running"))
    b = RunStore(Database(url), "host-b:5002")
    b.beat()
    assert b.get("a-live").status == "running"
    b.save(run("b-live", status="running"))
    with a.db.write() as db:  # A stops beating
        db.execute(sa.text("UPDATE replicas SET seen_at = seen_at - :gone WHERE name = 'host-a:5002'"),
                   {"gone": GONE_AFTER_S + 1})
    b.beat()
    assert b.get("a-live").status == "failed" and "interrupted" in b.get("a-live").error
    assert a.get("b-live").status == "running"


def test_runs_and_turns_older_than_the_retention_are_deleted_as_new_ones_are_written(url):
    db = Database(url)
    store = RunStore(db, "here:5002", retain_days=7)
    for r in (run("old", 8), run("old-but-running", 8, "running"), run("recent", 6)):
        store.save(r)
    store.save(run("new", 0))
    assert {r.run_id for r in store.list()} == {"old-but-running", "recent", "new"}

    sessions = SessionStore(db, retain_days=7)
    sessions.append_exchange("p", "a", "q", "x")
    with db.write() as c:
        c.execute(sa.text("UPDATE turns SET created_at = created_at - 8 * 86400"))
    sessions.append_exchange("p", "b", "q", "y")
    assert sessions.history("p", "a") == [] and len(sessions.history("p", "b")) == 2


def test_runs_are_kept_for_ever_when_retention_is_zero(tmp_path):
    forever = RunStore(Database(file_url(tmp_path / "forever.sqlite3")), "here:5002")
    forever.save(run("old", 800))
    forever.save(run("new", 0))
    assert len(forever.list()) == 2


def test_a_session_written_by_one_replica_is_continued_by_another(url):
    one, two = SessionStore(Database(url)), SessionStore(Database(url))
    one.append_exchange("law_expert", "s1", "What is GDPR?", "A regulation.")
    two.append_exchange("law_expert", "s1", "Its fines?", "Up to 20 million euros.")
    assert [t.content for t in one.history("law_expert", "s1")] == [
        "What is GDPR?", "A regulation.", "Its fines?", "Up to 20 million euros."]
    assert [t.content for t in two.history("law_expert", "s1", last_turns=1)] == ["Its fines?",
                                                                                  "Up to 20 million euros."]
    assert two.clear("law_expert", "s1") == 4 and one.history("law_expert", "s1") == []


@pytest.mark.servers
def test_knowledge_tables_an_older_conclave_made_per_persona_are_copied_into_the_shared_ones(postgres):
    """Before migrations, each expert made knowledge_<persona>_* tables in Postgres by hand; revision 0003 copies
    their documents, chunks (vectors included) and embedder record into the shared tables, keyed by persona, and
    leaves them for older replicas still serving during a rolling upgrade."""
    import numpy as np

    from agents.knowledge import PgKnowledgeStore

    url = fresh_database(postgres)
    old = sa.create_engine(sync_url(url))
    vector = "[" + ",".join(["0.1"] * 384) + "]"
    with old.begin() as db:
        for statement in (
                "CREATE EXTENSION IF NOT EXISTS vector",
                "CREATE TABLE knowledge_law_expert_documents (id TEXT PRIMARY KEY, source TEXT UNIQUE NOT NULL, "
                "title TEXT NOT NULL, sha256 TEXT NOT NULL, chunks INTEGER NOT NULL, bytes INTEGER NOT NULL, "
                "added_at DOUBLE PRECISION NOT NULL)",
                "CREATE TABLE knowledge_law_expert_chunks (id BIGSERIAL PRIMARY KEY, document_id TEXT NOT NULL, "
                "ord INTEGER NOT NULL, lead TEXT NOT NULL, body TEXT NOT NULL, embedding vector(384) NOT NULL)",
                "CREATE TABLE knowledge_law_expert_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                "INSERT INTO knowledge_law_expert_documents VALUES ('d1', 'gdpr.md', 'GDPR', 'abc', 1, 10, 1)",
                f"INSERT INTO knowledge_law_expert_chunks (document_id, ord, lead, body, embedding) "
                f"VALUES ('d1', 0, 'GDPR', 'Notify within 72 hours.', '{vector}')",
                "INSERT INTO knowledge_law_expert_meta VALUES ('embedder', 'minilm')"):
            db.execute(sa.text(statement))
    old.dispose()
    Database(url)
    store = PgKnowledgeStore(url, "law_expert")
    assert [d.source for d in store.documents()] == ["gdpr.md"] and store.embedder() == "minilm"
    assert store.search(np.full(384, 0.1, dtype=np.float32), 1)[0].body == "Notify within 72 hours."
    assert PgKnowledgeStore(url, "ai_expert").documents() == []
    assert "knowledge_law_expert_documents" in sa.inspect(sa.create_engine(sync_url(url))).get_table_names()


def test_a2a_tasks_older_than_the_retention_go_with_their_version_and_event_rows(url):
    """The SDK's cluster store keeps an append-only event log: each service prunes its own old tasks from it."""
    from datetime import UTC, datetime, timedelta

    from a2a.server.models import TaskEventModel, TaskModel, TaskVersionModel

    from common import a2a

    db = Database(url)
    tasks, versions, events = (m.__table__ for m in (TaskModel, TaskVersionModel, TaskEventModel))
    now = datetime.now(UTC).replace(tzinfo=None)
    with db.write() as c:
        for task, owner, age in (("old", "law_expert:", 9), ("new", "law_expert:", 1), ("other", "orchestrator:", 9)):
            c.execute(tasks.insert().values(id=task, context_id="c", kind="task", owner=owner,
                                            last_updated=now - timedelta(days=age), status={"state": 3}))
            c.execute(versions.insert().values(task_id=task, owner=owner, version=2))
            c.execute(events.insert(), [{"task_id": task, "owner": owner, "task_version": v, "event_data": b"e"}
                                        for v in (1, 2)])
    assert a2a.prune(db, "law_expert", retain_days=7) == 1
    assert a2a.prune(db, "law_expert", retain_days=0) == 0  # 0 keeps them for ever
    with db.read() as c:
        for table in (tasks, versions, events):
            key = table.c.id if table is tasks else table.c.task_id
            assert set(c.execute(sa.select(key)).scalars()) == {"new", "other"}
