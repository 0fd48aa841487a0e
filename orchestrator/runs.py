"""Runs in SQLite: written when a run starts and when it ends, so a crash leaves a 'running' row, never a torn one."""

from __future__ import annotations

import json
import time
from contextlib import closing

from common.protocol import RunRecord
from common.sqlite import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (created_at);
"""


class RunStore(SqliteStore):
    SCHEMA = SCHEMA

    def __init__(self, path, retain_days: float = 0):
        super().__init__(path, retain_days)
        self._fail_interrupted()

    def _fail_interrupted(self) -> None:
        """A run still 'running' when the service starts was cut off by a crash or a restart: it will never end, so
        it is marked failed, with the reason, instead of running for ever in /runs."""
        with self._write() as db:
            rows = db.execute("SELECT record FROM runs WHERE status = 'running'").fetchall()
            for (raw,) in rows:
                record = RunRecord.model_validate(json.loads(raw)).model_copy(update={
                    "status": "failed", "error": "interrupted: the orchestrator stopped before the run ended"})
                db.execute("UPDATE runs SET status = ?, record = ? WHERE run_id = ?",
                           (record.status, record.model_dump_json(), record.run_id))

    def save(self, record: RunRecord) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO runs (run_id, created_at, status, record) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(run_id) DO UPDATE SET status = excluded.status, record = excluded.record",
                (record.run_id, record.created_at, record.status, record.model_dump_json()),
            )
            if self.retain_s and record.status != "running":
                db.execute("DELETE FROM runs WHERE created_at < ? AND status != 'running'",
                           (time.time() - self.retain_s,))

    def get(self, run_id: str) -> RunRecord | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT record FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return RunRecord.model_validate(json.loads(row[0])) if row else None

    def list(self, limit: int = 50) -> list[RunRecord]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT record FROM runs ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [RunRecord.model_validate(json.loads(r[0])) for r in rows]
