"""SQLite stores shared by the services: WAL journaling and a connection per call, safe across server threads."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path


class SqliteStore:
    """Subclasses set ``SCHEMA``; every write runs in one transaction, so a crash leaves the file consistent."""

    SCHEMA = ""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(self.SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA synchronous=NORMAL")
        return db
