"""The service layer without HTTP: real SQLite database, real photo files, the tiny models; and the one mapping
from its domain errors to HTTP statuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from coinvision.sdk import pack as packlib
from coinvision.sync_server import catalog_service as service
from coinvision.sync_server import errors
from coinvision.sync_server.api_errors import STATUS_OF, register_error_handlers, status_of
from coinvision.sync_server.app import create_app, prepare_data_dir
from coinvision.sync_server.auth import create_token
from coinvision.sync_server.config import ServerConfig
from coinvision.sync_server.db import make_engine, make_sessionmaker, upgrade_database
from coinvision.sync_server.errors import (
    ConflictError,
    ContentRejectedError,
    GoneError,
    InvalidInputError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    StoredDataError,
    UnavailableError,
)
from coinvision.sync_server.models import Catalog, ReferenceImage
from coinvision.sync_server.state import ServerState
from coinvision.sync_server.uploads import DecodedUpload, decode_upload
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage

from tests.sync_server.helpers import sample_coins


def _state(tmp_path: Path, models_dir: Path | None) -> ServerState:
    cfg = ServerConfig.resolve(data_dir=tmp_path / "data", db_url=f"sqlite:///{tmp_path / 'server.db'}",
                               models_dir=models_dir)
    engine = make_engine(cfg.db_url)
    upgrade_database(engine)
    return ServerState(config=cfg, engine=engine, sessions=make_sessionmaker(engine),
                       signing_key=prepare_data_dir(cfg))


@pytest.fixture
def st(tmp_path: Path, tiny_models_dir: Path) -> Iterator[ServerState]:
    state = _state(tmp_path, tiny_models_dir)
    yield state
    state.engine.dispose()


@pytest.fixture
def session(st: ServerState) -> Iterator[Session]:
    with st.sessions() as s:
        yield s


def _photos(paths: list[Path]) -> list[DecodedUpload]:
    out = []
    for p in paths:
        with p.open("rb") as f:
            out.append(decode_upload(FileStorage(f, filename=p.name, content_type="image/jpeg"),
                                     max_bytes=20_000_000, max_pixels=40_000_000))
    return out


COINS = sample_coins("coins211", n_coins=2, per_coin=2)


def test_add_references_stores_photos_rows_and_index_then_publish_ships_them(
    st: ServerState, session: Session
) -> None:
    service.create_catalog(session, "c", "C")
    gen0 = session.get(Catalog, "c").generation
    (coin_a, label_a, paths_a), (coin_b, _, paths_b) = COINS
    added = service.add_references(st, session, "c", coin_a, _photos(paths_a), fields={"label": label_a}, create=True)
    assert added.coin_created and added.coin.label == label_a and len(added.references) == 2
    for ref in added.references:
        assert st.files.photo_path(ref.row.sha256).read_bytes() == next(
            p.read_bytes() for p in paths_a if p.name == ref.row.filename)
        assert ref.embedding.vector.shape == (st.embedder().dim,)
    service.add_references(st, session, "c", coin_b, _photos(paths_b), create=True)
    cat = session.get(Catalog, "c")
    session.refresh(cat)
    assert cat.generation == gen0 + 2
    index = st.index_for(session, cat)
    assert len(index) == 4 and index.generation == cat.generation

    out = service.publish(st, session, "c")
    assert not out.replayed and out.version.version == 1 and out.skipped_coins == []
    stored = service.version_file(st, session, "c", 1, "pack")
    pack = packlib.read_pack(stored.path)
    assert pack.sha256 == stored.sha256 == out.version.pack_sha256
    assert sorted(pack.records) == sorted([coin_a, coin_b]) and pack.vector_count == 4
    assert pack.records[coin_a].label == label_a

    again = service.publish(st, session, "c", idempotency_key="k1")
    assert service.publish(st, session, "c", idempotency_key="k1") == service.PublishOutcome(
        again.version, True, [], [])


def test_a_refused_add_writes_nothing(st: ServerState, session: Session) -> None:
    service.create_catalog(session, "c", "C")
    coin_id, _, paths = COINS[0]
    with pytest.raises(NotFoundError) as err:
        service.add_references(st, session, "c", coin_id, _photos(paths))  # the coin does not exist, no create
    assert err.value.code == "coin_not_found" and "create=1" in err.value.message
    with pytest.raises(InvalidInputError, match="coin id must be"):
        service.add_references(st, session, "c", "../etc", _photos(paths), create=True)
    with pytest.raises(NotFoundError, match="no catalog 'nope'"):
        service.add_references(st, session, "nope", coin_id, _photos(paths), create=True)
    assert session.scalar(select(func.count()).select_from(ReferenceImage)) == 0
    assert not list(st.files.photos())


def test_deletes_remove_rows_files_and_index_entries(st: ServerState, session: Session) -> None:
    service.create_catalog(session, "c", "C")
    (coin_a, _, paths_a), (coin_b, _, paths_b) = COINS
    a = service.add_references(st, session, "c", coin_a, _photos(paths_a), create=True)
    service.add_references(st, session, "c", coin_b, _photos(paths_b), create=True)
    assert service.delete_reference(st, session, a.references[0].row.id) is True
    with pytest.raises(NotFoundError, match="no reference image"):
        service.delete_reference(st, session, a.references[0].row.id)
    done = service.delete_coin(st, session, "c", coin_b)
    assert (done.images_removed, done.photos_removed) == (2, 2)
    assert len(st.index_for(session, session.get(Catalog, "c"))) == 1
    assert service.delete_catalog(st, session, "c") == 1
    assert not list(st.files.photos()) and session.get(Catalog, "c") is None


def test_publish_refusals_are_domain_errors(st: ServerState, session: Session) -> None:
    with pytest.raises(NotFoundError):
        service.publish(st, session, "c")
    service.create_catalog(session, "c", "C")
    with pytest.raises(ConflictError, match="catalog 'c' already exists"):
        service.create_catalog(session, "c", "again")
    service.save_coin(session, "c", "bare", {"label": "no photo"}, None)
    with pytest.raises(ConflictError) as err:
        service.publish(st, session, "c")
    assert err.value.code == "nothing_to_publish"


def test_version_file_is_gone_past_retention_and_refused_when_changed(st: ServerState, session: Session) -> None:
    service.create_catalog(session, "c", "C")
    coin_id, _, paths = COINS[0]
    service.add_references(st, session, "c", coin_id, _photos(paths), create=True)
    v = service.publish(st, session, "c").version
    with pytest.raises(NotFoundError, match="no delta"):
        service.version_file(st, session, "c", 1, "delta")
    path = st.files.pack_path("c", v.pack_file)
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(StoredDataError) as err:
        service.version_file(st, session, "c", 1, "pack")
    assert err.value.code == "pack_corrupt"
    path.unlink()
    with pytest.raises(GoneError):
        service.version_file(st, session, "c", 1, "pack")


def test_without_models_adding_photos_is_unavailable(tmp_path: Path) -> None:
    st = _state(tmp_path, None)
    with st.sessions() as session:
        service.create_catalog(session, "c", "C")
        coin_id, _, paths = COINS[0]
        with pytest.raises(UnavailableError) as err:
            service.add_references(st, session, "c", coin_id, _photos(paths), create=True)
        assert err.value.code == "no_models"
        assert session.scalar(select(func.count()).select_from(ReferenceImage)) == 0
    st.engine.dispose()


# ------------------------------------------------------------------ the one mapping to HTTP
@pytest.mark.parametrize(("error", "status"), [
    (InvalidInputError("bad_coin_id", "m"), 400),
    (NotFoundError("coin_not_found", "m"), 404),
    (ConflictError("near_duplicates", "m", [{"a": "x"}]), 409),
    (GoneError("pack_missing", "m"), 410),
    (ContentRejectedError("embedding_failed", "m"), 422),
    (RateLimitedError("m", 7), 429),
    (StoredDataError("pack_corrupt", "m"), 500),
    (UnavailableError("no_models", "m"), 503),
])
def test_each_domain_error_kind_answers_its_status_and_json_body(error: ServerError, status: int) -> None:
    app = Flask(__name__)
    register_error_handlers(app)

    @app.get("/v1/boom")
    def boom() -> str:
        raise error

    r = app.test_client().get("/v1/boom")
    assert r.status_code == status == status_of(error)
    assert r.get_json() == {"code": error.code, "message": "m", "detail": error.detail}
    if isinstance(error, RateLimitedError):
        assert r.headers["Retry-After"] == "7"


def test_every_domain_error_kind_has_a_status() -> None:
    kinds = {cls for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, ServerError) and cls is not ServerError}
    assert kinds == set(STATUS_OF)


def test_a_service_error_reaches_the_client_through_the_route(tmp_path: Path) -> None:
    cfg = ServerConfig.resolve(data_dir=tmp_path / "data", db_url=f"sqlite:///{tmp_path / 'server.db'}")
    app = create_app(cfg)
    st: ServerState = app.extensions["coinvision"]
    with st.sessions() as session:
        token = create_token(session, "maintainer", "test")
        service.create_catalog(session, "c", "C")
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    r = client.post("/v1/catalogs/c/publish", headers=headers)  # service.publish raises ConflictError
    assert r.status_code == 409 and r.get_json()["code"] == "nothing_to_publish"
    r = client.delete("/v1/catalogs/c/coins/x", headers=headers)  # service.delete_coin raises NotFoundError
    assert r.status_code == 404 and r.get_json()["code"] == "coin_not_found"
    st.engine.dispose()
