"""Real sync servers on loopback: SQLite always, PostgreSQL when COINVISION_TEST_PG_URL is set, an S3-compatible
bucket when COINVISION_TEST_S3_URL is set (both started by .ci/services.sh)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from coinvision.sync_server.config import ServerConfig
from coinvision.sync_server.live import start_local_server
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.sync_server.helpers import Server, ServerFactory

PG_URL = os.environ.get("COINVISION_TEST_PG_URL")
S3_URL = os.environ.get("COINVISION_TEST_S3_URL")
_NO_PG = "COINVISION_TEST_PG_URL is not set (source .ci/services.sh to start PostgreSQL)"
_NO_S3 = "COINVISION_TEST_S3_URL is not set (source .ci/services.sh to start the S3 server, moto)"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'server.db'}"
        return
    if not PG_URL:
        pytest.skip(_NO_PG)
    yield from _pg_schema(PG_URL)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema (skips without COINVISION_TEST_PG_URL)."""
    if not PG_URL:
        pytest.skip(_NO_PG)
    yield from _pg_schema(PG_URL)


def _pg_schema(admin_url: str) -> Iterator[str]:
    # One schema per test: tests stay independent without dropping anyone's tables.
    schema = "cv_" + uuid.uuid4().hex[:12]
    admin = create_engine(admin_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    yield make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@dataclass(frozen=True)
class Bucket:
    """A fresh bucket on the test S3 server: ``storage`` is what ``--storage`` takes, ``env`` what a server needs."""

    name: str
    endpoint: str
    client: Any  # boto3 S3 client, to look at and damage objects behind the server's back

    @property
    def storage(self) -> str:
        return f"s3://{self.name}/cv"

    @property
    def env(self) -> dict[str, str]:
        return {"COINVISION_S3_ENDPOINT_URL": self.endpoint, **_S3_CREDENTIALS}


# The test server takes any credentials; real ones would come from the environment or an instance role.
_S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "coinvision-test", "AWS_SECRET_ACCESS_KEY": "coinvision-test",
                   "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    """An empty bucket on the S3 server of .ci/services.sh, emptied and removed afterwards (skips without one)."""
    if not S3_URL:
        pytest.skip(_NO_S3)
    boto3 = pytest.importorskip("boto3")
    for name, value in {**_S3_CREDENTIALS, "COINVISION_S3_ENDPOINT_URL": S3_URL}.items():
        monkeypatch.setenv(name, value)
    client = boto3.session.Session().client("s3", endpoint_url=S3_URL)
    bucket = Bucket("cv-" + uuid.uuid4().hex[:16], S3_URL, client)
    client.create_bucket(Bucket=bucket.name)
    yield bucket
    with contextlib.suppress(client.exceptions.NoSuchBucket):  # a test may remove it (a misconfigured bucket)
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket.name)
                for o in page.get("Contents", [])]
        for key in keys:
            client.delete_object(Bucket=bucket.name, Key=key)
        client.delete_bucket(Bucket=bucket.name)


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
