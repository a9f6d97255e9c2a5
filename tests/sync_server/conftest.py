"""Real sync servers on loopback: SQLite always, PostgreSQL when COINVISION_TEST_PG_URL is set (.ci/services.sh)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coinvision.sync_server.config import ServerConfig
from coinvision.sync_server.live import start_local_server
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.sync_server.helpers import Server, ServerFactory

PG_URL = os.environ.get("COINVISION_TEST_PG_URL")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'server.db'}"
        return
    if not PG_URL:
        pytest.skip("COINVISION_TEST_PG_URL is not set (source .ci/services.sh to start PostgreSQL)")
    # One schema per test: tests stay independent without dropping anyone's tables.
    schema = "cv_" + uuid.uuid4().hex[:12]
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    yield make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def make_server(tmp_path: Path, tiny_models_dir: Path) -> Iterator[ServerFactory]:
    started: list[Server] = []

    def factory(db_url: str | None = None, data_dir: Path | None = None, **overrides: Any) -> Server:
        data = data_dir or tmp_path / f"data{len(started)}"
        cfg = ServerConfig.resolve(
            data_dir=data, db_url=db_url or f"sqlite:///{data / 'server.db'}", models_dir=tiny_models_dir, **overrides
        )
        server = Server(start_local_server(cfg))
        started.append(server)
        return server

    yield factory
    for server in started:
        server.local.stop()


@pytest.fixture
def server(make_server: ServerFactory, db_url: str) -> Server:
    """A fresh server on each database backend."""
    return make_server(db_url)


@pytest.fixture
def sqlite_server(make_server: ServerFactory) -> Server:
    return make_server()
