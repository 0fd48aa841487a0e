"""SQLite stores shared by the services: WAL journaling and a connection per call, safe across server threads."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from common.errors import StorageFull


class UnusableDatabase(RuntimeError):
    """A store's file exists but SQLite cannot read it."""


class SqliteStore:
    """Subclasses set ``SCHEMA``; every write runs in one transaction, so a crash leaves the file consistent.
    ``retain_days`` is how long a subclass keeps what it stores (0: for ever); its writes prune what is older."""

    SCHEMA = ""

    def __init__(self, path: Path, retain_days: float = 0):
        self.retain_s = retain_days * 86400
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with closing(self._connect()) as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(self.SCHEMA)
        except sqlite3.DatabaseError as exc:  # not a database, or a damaged one: say which file and what to do
            raise UnusableDatabase(f"{self.path} is not a usable SQLite database ({exc}); move it aside (the service "
                                   "starts a new one) or restore it from a backup") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. A full disk rolls it back (nothing stored before is touched) and is a
        StorageFull naming the file, instead of SQLite's bare OperationalError."""
        try:
            with closing(self._connect()) as db, db:
                yield db
        except sqlite3.OperationalError as exc:
            if "full" not in str(exc) and "disk I/O" not in str(exc):
                raise
            raise StorageFull(f"could not write {self.path} ({exc}): free space where DATA_DIR points",
                              "storage_full") from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA synchronous=NORMAL")
        return db
