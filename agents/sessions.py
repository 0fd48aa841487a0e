"""Multi-turn history in SQLite (WAL, one transaction per write), so sessions survive restarts and crashes."""

from __future__ import annotations

import time
from contextlib import closing

from common.protocol import Turn
from common.sqlite import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    persona TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_session ON turns (persona, session_id, id);
CREATE INDEX IF NOT EXISTS turns_by_time ON turns (created_at);
"""


class SessionStore(SqliteStore):
    """History per (persona, session id)."""

    SCHEMA = SCHEMA

    def history(self, persona: str, session_id: str, last_turns: int | None = None) -> list[Turn]:
        """The session's turns, oldest first; ``last_turns`` keeps only the newest exchanges (user + answer pairs)."""
        query = "SELECT role, content, created_at FROM turns WHERE persona = ? AND session_id = ? ORDER BY id DESC"
        params: tuple = (persona, session_id)
        if last_turns is not None:
            query += " LIMIT ?"
            params += (last_turns * 2,)
        with closing(self._connect()) as db:
            rows = db.execute(query, params).fetchall()
        return [Turn(role=r, content=c, created_at=t) for r, c, t in reversed(rows)]

    def append_exchange(self, persona: str, session_id: str, question: str, answer: str) -> None:
        """Store a question and its answer together: both or neither."""
        now = time.time()
        with self._write() as db:
            db.executemany(
                "INSERT INTO turns (session_id, persona, role, content, created_at) VALUES (?, ?, ?, ?, ?)",
                [(session_id, persona, "user", question, now), (session_id, persona, "assistant", answer, now)],
            )
            if self.retain_s:
                db.execute("DELETE FROM turns WHERE created_at < ?", (now - self.retain_s,))

    def clear(self, persona: str, session_id: str) -> int:
        with self._write() as db:
            return db.execute("DELETE FROM turns WHERE persona = ? AND session_id = ?", (persona, session_id)).rowcount
