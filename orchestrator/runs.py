"""Runs in the service's database: written when a run starts and when it ends, so a crash leaves a 'running' row,
never a torn one. Each run names its replica; replicas beat every ``HEARTBEAT_S``, and a run whose replica stopped
beating (crashed, killed, scaled away) is failed by whichever replica notices first, never one still running."""

from __future__ import annotations

import json
import logging
import threading
import time

import sqlalchemy as sa

from common.database import Database, replicas, runs
from common.protocol import RunRecord

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
# a replica silent this long is gone: several missed beats, so a busy one (a long GC, a slow disk) is not taken for dead
GONE_AFTER_S = 6 * HEARTBEAT_S
INTERRUPTED = "interrupted: the orchestrator running it stopped before the run ended"


class RunStore:
    def __init__(self, db: Database, owner: str, retain_days: float = 0):
        self.db, self.owner, self.retain_s = db, owner, retain_days * 86400
        self._stop = threading.Event()
        # this replica's runs left 'running' by its previous life (same host and port) ended with it
        self.sweep(also_mine=True)

    def beat(self) -> None:
        """Say this replica is alive, then fail the runs of replicas that are not."""
        with self.db.write() as db:
            db.execute(self.db.upsert(replicas, ["name"], name=self.owner, seen_at=time.time()))
        self.sweep()

    def start_heartbeat(self) -> None:
        def loop() -> None:
            while True:
                try:
                    self.beat()
                except Exception:  # a database that is briefly away: the next beat tries again
                    log.exception("run store heartbeat failed")
                if self._stop.wait(HEARTBEAT_S):
                    return

        threading.Thread(target=loop, name="runs-heartbeat", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def sweep(self, also_mine: bool = False) -> int:
        """Mark failed, with the reason, every 'running' run whose replica is gone (and this replica's own, at
        start-up): it will never end, and would otherwise run for ever in /runs."""
        alive = sa.select(replicas.c.name).where(replicas.c.seen_at >= time.time() - GONE_AFTER_S)
        if also_mine:
            alive = alive.where(replicas.c.name != self.owner)
        orphaned = sa.and_(runs.c.status == "running", sa.or_(runs.c.owner.is_(None), runs.c.owner.not_in(alive)))
        with self.db.write() as db:
            rows = db.execute(sa.select(runs.c.record).where(orphaned).with_for_update(skip_locked=True)).all()
            for (raw,) in rows:
                record = RunRecord.model_validate(json.loads(raw)).model_copy(
                    update={"status": "failed", "error": INTERRUPTED})
                db.execute(runs.update().where(runs.c.run_id == record.run_id, runs.c.status == "running")
                           .values(status=record.status, record=record.model_dump_json()))
        return len(rows)

    def save(self, record: RunRecord) -> None:
        with self.db.write() as db:
            db.execute(self.db.upsert(runs, ["run_id"], run_id=record.run_id, created_at=record.created_at,
                                      status=record.status, record=record.model_dump_json(), owner=self.owner))
            if self.retain_s and record.status != "running":
                db.execute(runs.delete().where(runs.c.created_at < time.time() - self.retain_s,
                                               runs.c.status != "running"))

    def get(self, run_id: str) -> RunRecord | None:
        with self.db.read() as db:
            raw = db.execute(sa.select(runs.c.record).where(runs.c.run_id == run_id)).scalar()
        return RunRecord.model_validate(json.loads(raw)) if raw else None

    def list(self, limit: int = 50) -> list[RunRecord]:
        with self.db.read() as db:
            rows = db.execute(sa.select(runs.c.record).order_by(runs.c.created_at.desc()).limit(limit)).scalars()
            return [RunRecord.model_validate(json.loads(raw)) for raw in rows]
