"""File storage backends: the local disk and an S3-compatible bucket (the moto server of .ci/services.sh).

The same contract runs on both (photos and pack files round-trip, are verified by sha256, listed and removed);
then the S3 backend under a real server: its cache, its refusals (damaged objects, a missing bucket, another
signing key) and the whole publish -> device sync loop with the packs in the bucket.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from coinvision.sdk.errors import ConfigError
from coinvision.sdk.sync_client import SyncClient
from coinvision.sync_server.config import ServerConfig
from coinvision.sync_server.storage import (
    FileStore,
    LocalFileStore,
    S3FileStore,
    StoredFileCorruptError,
    StoredFileMissingError,
    open_store,
    parse_s3_url,
)

from tests.sync_server.conftest import Bucket
from tests.sync_server.helpers import ServerFactory, populate, sample_coins

PHOTO = b"\xff\xd8 not really a jpeg, content-addressed all the same"
PHOTO_SHA = hashlib.sha256(PHOTO).hexdigest()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FileStore]:
    if request.param == "local":
        yield LocalFileStore(tmp_path / "images", tmp_path / "packs")
        return
    bucket: Bucket = request.getfixturevalue("s3_bucket")
    yield S3FileStore.connect(bucket.storage, tmp_path / "cache", endpoint_url=bucket.endpoint)


def test_photos_round_trip_are_listed_and_removed(store: FileStore) -> None:
    store.put_photo(PHOTO_SHA, PHOTO)
    store.put_photo(PHOTO_SHA, PHOTO)  # content-addressed: the same photo twice is one file
    assert store.read_photo(PHOTO_SHA) == PHOTO
    assert [f.name for f in store.photos()] == [PHOTO_SHA]
    assert store.remove_photo(PHOTO_SHA) is True
    assert store.remove_photo(PHOTO_SHA) is False
    with pytest.raises(StoredFileMissingError, match=PHOTO_SHA):
        store.read_photo(PHOTO_SHA)
    assert list(store.photos()) == []


def test_a_photo_that_does_not_hash_to_its_name_is_refused(store: FileStore) -> None:
    other = "0" * 64
    store.put_photo(other, PHOTO)
    with pytest.raises(StoredFileCorruptError, match="does not hash to its name"):
        store.read_photo(other)


def test_pack_files_are_served_only_with_their_recorded_bytes(store: FileStore) -> None:
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    store.put_pack_file("euro", "v1-abc.pack", data)
    store.put_pack_file("euro", "v1-v2-def.delta", b"delta")
    store.put_pack_file("usd", "v1-123.pack", b"usd")
    path = store.pack_file("euro", "v1-abc.pack", len(data), sha)
    assert path.read_bytes() == data
    assert store.pack_file("euro", "v1-abc.pack", len(data), sha) == path  # verified once, then reused
    with pytest.raises(StoredFileCorruptError, match=r"v1-abc\.pack"):
        store.pack_file("euro", "v1-abc.pack", len(data), "f" * 64)
    with pytest.raises(StoredFileCorruptError):
        store.pack_file("euro", "v1-abc.pack", len(data) + 1, sha)
    with pytest.raises(StoredFileMissingError, match=r"v9-000\.pack"):
        store.pack_file("euro", "v9-000.pack", 1, sha)
    assert sorted(f.name for f in store.pack_files("euro")) == ["v1-abc.pack", "v1-v2-def.delta"]
    assert store.catalogs_with_files() == ["euro", "usd"]
    store.remove_pack_file("euro", "v1-v2-def.delta")
    assert [f.name for f in store.pack_files("euro")] == ["v1-abc.pack"]
    store.remove_catalog_files("euro")
    assert list(store.pack_files("euro")) == [] and store.catalogs_with_files() == ["usd"]
    with pytest.raises(StoredFileMissingError):
        store.pack_file("euro", "v1-abc.pack", len(data), sha)


# ---------------------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(("url", "message"), [
    ("/srv/packs", "not an s3:// URL"),
    ("s3://", "not a valid bucket name"),
    ("s3://Upper_Case", "not a valid bucket name"),
    ("s3://bucket/a/../b", "no empty, '.' or '..' parts"),
    ("s3://bucket/a b", "must be '/'-separated names"),
])
def test_bad_storage_urls_are_refused_with_the_fix(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        ServerConfig.resolve(data_dir=tmp_path, storage=url)
    assert url in str(err.value)


def test_storage_url_parts() -> None:
    assert parse_s3_url("s3://coins") == ("coins", "")
    assert parse_s3_url("s3://coins/prod/eu/") == ("coins", "prod/eu/")


def test_storage_and_endpoint_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINVISION_STORAGE", "s3://coins/prod")
    monkeypatch.setenv("COINVISION_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    cfg = ServerConfig.resolve(data_dir=tmp_path)
    assert (cfg.storage, cfg.s3_endpoint_url) == ("s3://coins/prod", "http://127.0.0.1:9000")
    assert ServerConfig.resolve(data_dir=tmp_path, storage="s3://other").storage == "s3://other"  # argument wins
    monkeypatch.setenv("COINVISION_S3_ENDPOINT_URL", "127.0.0.1:9000")
    with pytest.raises(ConfigError, match="http"):
        ServerConfig.resolve(data_dir=tmp_path)
    monkeypatch.delenv("COINVISION_STORAGE")
    monkeypatch.delenv("COINVISION_S3_ENDPOINT_URL")
    assert isinstance(open_store(ServerConfig.resolve(data_dir=tmp_path)), LocalFileStore)  # the default


@pytest.mark.s3
def test_a_missing_bucket_or_endpoint_stops_the_start_naming_it(s3_bucket: Bucket, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"bucket 'cv-nope' does not exist at S3 endpoint http://127.*aws s3 mb"):
        S3FileStore.connect("s3://cv-nope", tmp_path, endpoint_url=s3_bucket.endpoint)
    with pytest.raises(ConfigError, match=r"cannot reach the bucket s3://cv-x/.*COINVISION_S3_ENDPOINT_URL"):
        S3FileStore.connect("s3://cv-x", tmp_path, endpoint_url="http://127.0.0.1:9")


# ---------------------------------------------------------------------------------------------- S3 specifics
@pytest.mark.s3
def test_s3_objects_are_verified_on_download_and_cached_copies_reverified(s3_bucket: Bucket, tmp_path: Path) -> None:
    store = S3FileStore.connect(s3_bucket.storage, tmp_path / "cache", endpoint_url=s3_bucket.endpoint)
    data = os.urandom(100_000)
    sha = hashlib.sha256(data).hexdigest()
    store.put_pack_file("euro", "v1.pack", data)
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key="cv/packs/euro/v1.pack")
    assert head["Metadata"]["sha256"] == sha  # operators can check an object without the database
    # an object changed behind the server's back is refused, and nothing of it is cached
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="cv/packs/euro/v1.pack", Body=data[:-1] + b"!")
    with pytest.raises(StoredFileCorruptError, match=r"s3://cv-.*/cv/packs/euro/v1\.pack"):
        store.pack_file("euro", "v1.pack", len(data), sha)
    assert not any((tmp_path / "cache").rglob("*.pack")) and not any((tmp_path / "cache").rglob(".*tmp"))
    # restored: downloaded, verified, cached; a damaged cached copy is fetched again
    store.put_pack_file("euro", "v1.pack", data)
    path = store.pack_file("euro", "v1.pack", len(data), sha)
    assert path.is_relative_to(tmp_path / "cache") and path.read_bytes() == data
    path.write_bytes(b"x" * len(data))
    assert store.pack_file("euro", "v1.pack", len(data), sha).read_bytes() == data


@pytest.mark.s3
def test_s3_cache_stays_under_its_budget(s3_bucket: Bucket, tmp_path: Path) -> None:
    store = S3FileStore.connect(s3_bucket.storage, tmp_path / "cache", endpoint_url=s3_bucket.endpoint,
                                cache_bytes=25_000)
    blobs = {f"v{i}.pack": os.urandom(10_000) for i in range(4)}
    for name, data in blobs.items():
        store.put_pack_file("euro", name, data)
        store.pack_file("euro", name, len(data), hashlib.sha256(data).hexdigest())
    cached = sorted(p.name for p in (tmp_path / "cache" / "euro").iterdir())
    assert cached == ["v2.pack", "v3.pack"]  # the least recently served went first
    data = blobs["v0.pack"]
    assert store.pack_file("euro", "v0.pack", len(data), hashlib.sha256(data).hexdigest()).read_bytes() == data


@pytest.mark.s3
def test_a_server_with_another_signing_key_refuses_to_start_on_the_bucket(
    s3_bucket: Bucket, make_server: ServerFactory, tmp_path: Path
) -> None:
    first = make_server(storage=s3_bucket.storage)
    stored = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="cv/signing-key.pub")["Body"].read()
    assert stored.decode() == first.public_key
    with pytest.raises(ConfigError, match="give every replica the same key file"):
        make_server(storage=s3_bucket.storage)  # a fresh data dir: a fresh key
    same_key = make_server(storage=s3_bucket.storage, signing_key_path=first.state.config.key_path)
    assert same_key.public_key == first.public_key


# ---------------------------------------------------------------------------------------------- a server on S3
@pytest.mark.s3
def test_publish_and_device_sync_with_packs_and_photos_in_the_bucket(
    s3_bucket: Bucket, make_server: ServerFactory, tmp_path: Path
) -> None:
    server = make_server(storage=s3_bucket.storage, pack_quant="fp32", pack_retention_versions=2)
    cfg = server.state.config
    coins = sample_coins("coins211", n_coins=3, per_coin=1)
    populate(server, "euro", coins[:2])
    # the photos are in the bucket, readable by any process that has it
    photos = {p.read_bytes() for _, _, images in coins[:2] for p in images}
    shas = {hashlib.sha256(b).hexdigest() for b in photos}
    reader = S3FileStore.connect(s3_bucket.storage, tmp_path / "reader-cache", endpoint_url=s3_bucket.endpoint)
    assert {f.name for f in reader.photos()} == shas
    assert {reader.read_photo(sha) for sha in shas} == photos
    assert not cfg.images_dir.exists() and not cfg.packs_dir.exists()  # nothing on the server's own disk

    v1 = server.post("/v1/catalogs/euro/publish").json()
    client = SyncClient(server.url, "euro", tmp_path / "device", server.public_key, token=server.local.device_token)
    assert (client.sync().via, hashlib.sha256(client.pack_path.read_bytes()).hexdigest()) == (
        "full", v1["pack"]["sha256"])
    populate(server, "euro", coins[2:])
    v2 = server.post("/v1/catalogs/euro/publish").json()  # its delta is built from v1's pack in the bucket
    synced = client.sync()
    assert (synced.version, synced.via) == (2, "delta")
    assert hashlib.sha256(client.pack_path.read_bytes()).hexdigest() == v2["pack"]["sha256"]

    # Range and If-None-Match work as on the local disk (the verified cached copy is what is sent)
    url = "/v1/catalogs/euro/versions/2/pack"
    part = server.get(url, who="device", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == client.pack_path.read_bytes()[10:20]
    assert server.get(url, who="device", headers={"If-None-Match": f'"{v2["pack"]["sha256"]}"'}).status_code == 304

    # the retention (2 versions) removes v1's objects from the bucket; v1 answers 410
    populate(server, "euro", [(coins[0][0], coins[0][1], sample_coins("coins211", 1, 2)[0][2][1:])])
    server.post("/v1/catalogs/euro/publish")
    names = {o["Key"].rsplit("/", 1)[-1] for o in s3_bucket.client.list_objects_v2(
        Bucket=s3_bucket.name, Prefix="cv/packs/euro/")["Contents"]}
    packs = sorted(n.split("-")[0] for n in names if n.endswith(".pack"))
    assert packs == ["v2", "v3"] and len(names) == 4  # v2, v3 packs + their deltas (v1->v2, v2->v3)
    assert server.get("/v1/catalogs/euro/versions/1/pack", who="device").status_code == 410

    # deleting the catalog removes its pack objects and the photos nothing else names
    assert server.delete("/v1/catalogs/euro?confirm=euro").status_code == 200
    assert "Contents" not in s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="cv/packs/")
    assert "Contents" not in s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="cv/images/")


@pytest.mark.s3
def test_damaged_or_unreachable_objects_are_refused_not_served(
    s3_bucket: Bucket, make_server: ServerFactory
) -> None:
    server = make_server(storage=s3_bucket.storage)
    populate(server, "euro", sample_coins("coins211", n_coins=1, per_coin=1))
    assert server.post("/v1/catalogs/euro/publish").status_code == 201
    listed = s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="cv/packs/euro/")["Contents"]
    key = listed[0]["Key"]
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=b"not the pack")
    r = server.get("/v1/catalogs/euro/versions/1/pack", who="device")
    assert r.status_code == 500 and r.json()["code"] == "pack_corrupt"
    # the bucket disappears (a misconfiguration): downloads and uploads answer 503 naming the bucket and the fix
    for o in s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name)["Contents"]:
        s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=o["Key"])
    s3_bucket.client.delete_bucket(Bucket=s3_bucket.name)
    r = server.get("/v1/catalogs/euro/versions/1/pack", who="device")
    assert r.status_code == 503 and r.json()["code"] == "storage_unavailable", r.text
    assert s3_bucket.name in r.json()["message"] and "create the bucket" in r.json()["message"]
    coin_id, label, images = sample_coins("coins211", n_coins=2, per_coin=1)[1]
    assert server.put(f"/v1/catalogs/euro/coins/{coin_id}", json={"label": label}).status_code == 201
    up = server.post(f"/v1/catalogs/euro/coins/{coin_id}/images",
                     files=[("image", (images[0].name, images[0].read_bytes(), "image/jpeg"))])
    assert up.status_code == 503 and up.json()["code"] == "storage_unavailable"
    assert server.get(f"/v1/catalogs/euro/coins/{coin_id}").json()["images"] == []  # nothing half-written


@pytest.mark.s3
def test_cleanup_command_on_the_bucket(s3_bucket: Bucket, make_server: ServerFactory) -> None:
    server = make_server(storage=s3_bucket.storage)
    cfg = server.state.config
    populate(server, "euro", sample_coins("coins211", n_coins=1, per_coin=1))
    orphan = "ab" * 32
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"cv/images/ab/{orphan}.img", Body=b"x")
    env = {**os.environ, **s3_bucket.env, "COINVISION_ORPHAN_GRACE_S": "0"}
    out = subprocess.run([sys.executable, "-m", "coinvision.cli.main", "cleanup", "--db", cfg.db_url, "--data-dir",
                          str(cfg.data_dir), "--storage", s3_bucket.storage], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "removed 1 photo file(s)" in out.stdout
    left = {o["Key"] for o in s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="cv/images/")["Contents"]}
    assert len(left) == 1 and orphan not in next(iter(left))
