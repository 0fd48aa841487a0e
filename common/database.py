"""One database for a service's state (runs, sessions, A2A tasks): SQLAlchemy engines for ``DATABASE_URL``, the
schema from Alembic (common/migrations), upgraded once per start under a lock so replicas starting together do not
race. SQLite (a file per service by default, WAL, safe across processes) or Postgres (shared by every replica)."""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from common.errors import StorageFull

MIGRATIONS = Path(__file__).parent / "migrations"
# Postgres errors that mean "no room": disk full, out of memory, quota (SQLSTATE class 53)
NO_ROOM = ("53100", "53200", "53400")

metadata = sa.MetaData()

# What the migrations create, as the stores query it (a migration is the history; these tables are the present).
runs = sa.Table(
    "runs", metadata,
    sa.Column("run_id", sa.Text, primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
    sa.Column("owner", sa.Text),  # the replica running it (host:port); NULL for runs stored before replicas
)
replicas = sa.Table(
    "replicas", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("seen_at", sa.Float, nullable=False),
)
turns = sa.Table(
    "turns", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.Text, nullable=False),
    sa.Column("persona", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


class UnusableDatabase(RuntimeError):
    """The database cannot be opened or upgraded: a damaged SQLite file, a server that refuses us."""


def sync_url(url: str) -> str:
    """Postgres through psycopg 3 (installed), not SQLAlchemy's default psycopg2."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def async_url(url: str) -> str:
    """The same database for the A2A SDK's asyncio task store."""
    parsed = make_url(sync_url(url))
    if parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed.render_as_string(hide_password=False)


def file_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


class Database:
    """An engine on ``url``, its schema upgraded to the newest migration when opened."""

    def __init__(self, url: str):
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self._file = parsed.database if self.dialect == "sqlite" else None  # None too for an in-memory SQLite
        self.where = self._file or parsed.render_as_string(hide_password=True)
        if self._file:
            Path(self._file).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(sync_url(url), pool_pre_ping=self.dialect != "sqlite")
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._async: AsyncEngine | None = None
        self._async_lock = threading.Lock()
        try:
            with self._migration_lock():
                config = Config()
                config.set_main_option("script_location", str(MIGRATIONS))
                with self.engine.begin() as connection:
                    config.attributes["connection"] = connection
                    command.upgrade(config, "head")
        except sa.exc.DatabaseError as exc:
            self.engine.dispose()
            if self.dialect == "sqlite":
                raise UnusableDatabase(f"{self.where} is not a usable SQLite database ({exc.orig}); move it aside "
                                       "(the service starts a new one) or restore it from a backup") from None
            raise UnusableDatabase(f"cannot open the database at {self.where}: {exc.orig}") from None

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """One upgrade at a time: a Postgres advisory lock across hosts, a lock file beside an SQLite file."""
        if self.dialect == "postgresql":
            with self.engine.connect() as connection:
                connection.execute(sa.text("SELECT pg_advisory_lock(hashtext('conclave-migrations'))"))
                try:
                    yield
                finally:
                    connection.execute(sa.text("SELECT pg_advisory_unlock(hashtext('conclave-migrations'))"))
                    connection.commit()
        elif self._file:
            with open(f"{self._file}.migrating", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield
        else:
            yield

    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """One write transaction. A full disk rolls it back (nothing stored before is touched) and is a
        StorageFull naming the database, instead of the driver's bare error."""
        try:
            with self.engine.begin() as connection:
                yield connection
        except sa.exc.OperationalError as exc:
            text, state = str(exc.orig), getattr(exc.orig, "sqlstate", None)
            if "full" not in text and "disk I/O" not in text and state not in NO_ROOM:
                raise
            raise StorageFull(f"could not write {self.where} ({exc.orig}): free space where the database lives",
                              "storage_full") from None

    def read(self) -> sa.Connection:
        return self.engine.connect()

    def upsert(self, table: sa.Table, keys: list[str], **values):
        """INSERT ... ON CONFLICT (keys) DO UPDATE, in the dialect's own words (SQLite and Postgres say it alike)."""
        insert = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table).values(**values)
        return insert.on_conflict_do_update(index_elements=keys,
                                            set_={k: insert.excluded[k] for k in values if k not in keys})

    def async_engine(self) -> AsyncEngine:
        """The same database for asyncio code (the A2A SDK's task store), made once."""
        with self._async_lock:
            if self._async is None:
                self._async = create_async_engine(async_url(self.url))
            return self._async


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
