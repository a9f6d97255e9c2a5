"""Alembic migrations create exactly the ORM schema, on SQLite and PostgreSQL, and are idempotent."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from coinvision.sync_server.db import make_engine, upgrade_database
from coinvision.sync_server.models import Base
from sqlalchemy import inspect


def test_upgrade_database_matches_models_and_is_idempotent(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade_database(engine)
    upgrade_database(engine)  # second start of the server: nothing to do, no error
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert {"api_tokens", "catalogs", "coins", "reference_images", "catalog_versions"} <= set(
        inspect(engine).get_table_names()
    )
    engine.dispose()


def test_sqlite_database_uses_wal(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
