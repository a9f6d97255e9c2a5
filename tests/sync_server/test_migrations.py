"""Alembic migrations create exactly the ORM schema, on SQLite and PostgreSQL, and are idempotent."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from coinvision.sync_server.db import alembic_config, make_engine, upgrade_database
from coinvision.sync_server.models import Base
from sqlalchemy import inspect, text


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


def test_upgrade_from_0001_keeps_data_and_old_versions_must_be_republished(db_url: str) -> None:
    """A server from before signed records: its rows survive the upgrade, its unsigned version is not served."""
    engine = make_engine(db_url)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text("INSERT INTO api_tokens (token_hash, scope, label, created_at, revoked) "
                          "VALUES ('h', 'device', 'old app', CURRENT_TIMESTAMP, false)"))
        conn.execute(text("INSERT INTO catalogs (id, name, created_at, generation) VALUES ('c', 'C', "
                          "CURRENT_TIMESTAMP, 3)"))
        conn.execute(text("INSERT INTO catalog_versions (catalog_id, version, model_fingerprint, pack_file, "
                          "pack_size, pack_sha256, coin_count, vector_count, quant, created_at) VALUES ('c', 1, 'f', "
                          "'v1.pack', 1, '00', 1, 1, 'int8', CURRENT_TIMESTAMP)"))
    upgrade_database(engine)
    with engine.connect() as conn:
        token = conn.execute(text("SELECT label, expires_at, revoked FROM api_tokens")).one()
        version = conn.execute(text("SELECT version, record_signature, idempotency_key FROM catalog_versions")).one()
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert tuple(token) == ("old app", None, False)  # old tokens keep working and never expire
    assert tuple(version) == (1, None, None)  # unsigned: refused until the catalog is published again
    assert diff == []
    engine.dispose()
