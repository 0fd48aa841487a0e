"""Multi-turn history in the expert's database (one transaction per write), so sessions survive restarts and crashes,
and any replica of the expert continues a session another one started."""

from __future__ import annotations

import time

import sqlalchemy as sa

from common.database import Database, turns
from common.protocol import Turn


class SessionStore:
    """History per (persona, session id)."""

    def __init__(self, db: Database, retain_days: float = 0):
        self.db, self.retain_s = db, retain_days * 86400

    def history(self, persona: str, session_id: str, last_turns: int | None = None) -> list[Turn]:
        """The session's turns, oldest first; ``last_turns`` keeps only the newest exchanges (user + answer pairs)."""
        query = (sa.select(turns.c.role, turns.c.content, turns.c.created_at)
                 .where(turns.c.persona == persona, turns.c.session_id == session_id).order_by(turns.c.id.desc()))
        if last_turns is not None:
            query = query.limit(last_turns * 2)
        with self.db.read() as db:
            rows = db.execute(query).all()
        return [Turn(role=r, content=c, created_at=t) for r, c, t in reversed(rows)]

    def append_exchange(self, persona: str, session_id: str, question: str, answer: str) -> None:
        """Store a question and its answer together: both or neither."""
        now = time.time()
        with self.db.write() as db:
            db.execute(turns.insert(), [
                {"session_id": session_id, "persona": persona, "role": "user", "content": question, "created_at": now},
                {"session_id": session_id, "persona": persona, "role": "assistant", "content": answer,
                 "created_at": now}])
            if self.retain_s:
                db.execute(turns.delete().where(turns.c.created_at < now - self.retain_s))

    def clear(self, persona: str, session_id: str) -> int:
        with self.db.write() as db:
            return db.execute(turns.delete().where(turns.c.persona == persona,
                                                   turns.c.session_id == session_id)).rowcount
