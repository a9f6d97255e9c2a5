"""Engine, sessions and migrations. SQLite (WAL) by default, PostgreSQL through the same code."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["MIGRATIONS_DIR", "make_engine", "make_sessionmaker", "upgrade_database"]

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers (device downloads, manifest) never wait for a writer (publish, upload).
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _private_file(path: Path) -> None:
    """Create ``path`` as 0600 if missing, tighten it to 0600 if not (SQLite gives its -wal/-shm files the same
    mode as the database file)."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    if path.stat().st_mode & 0o077:
        log.warning("%s was readable by others (mode %o); setting it to 0600", path, path.stat().st_mode & 0o777)
        path.chmod(0o600)


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _private_file(Path(parsed.database))
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


# Any constant: the PostgreSQL advisory lock that serialises migrations of concurrently starting workers.
_MIGRATION_LOCK_KEY = 0x636F696E  # "coin"


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with os.fdopen(os.open(f"{database}.migrate.lock", os.O_RDWR | os.O_CREAT, 0o600), "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def upgrade_database(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent; every worker runs it at start).

    gunicorn starts its workers at once; without a lock two of them would both find an empty database and
    both create the tables. PostgreSQL: a transaction-scoped advisory lock; SQLite: a lock file beside it.
    """
    cfg = alembic_config()
    backend = engine.url.get_backend_name()
    with _sqlite_file_lock(engine) if backend == "sqlite" else contextlib.nullcontext(), engine.begin() as conn:
        if backend == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    log.info("database schema up to date (%s)", engine.url.render_as_string(hide_password=True))
