"""Devices: maintainer flow -> publish -> signed manifest -> SyncClient into a cache -> offline recognition.

Every refusal (bad signature, rollback, expiry, tampered bytes, wrong model) leaves the last good pack cached
and loadable; a dropped download resumes with a Range request; a second version arrives as a delta.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from coinvision.sdk import pack as packlib
from coinvision.sdk.errors import PackFingerprintError, SyncError
from coinvision.sdk.sync_client import SyncClient
from coinvision.sync_server.signing import load_or_create_key, public_key_b64

from tests.sync_server.helpers import Server, ServerFactory, TamperingProxy, populate, sample_coins

CATALOG = "euro"


def _client(url: str, server: Server, cache: Path, **kw: object) -> SyncClient:
    return SyncClient(url, CATALOG, cache, server.public_key, token=server.local.device_token, **kw)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_last_good_kept(client: SyncClient, version: int, sha: str) -> None:
    assert client.cached_version() == version and _sha(client.pack_path) == sha
    assert client.load_pack().catalog_version == version  # offline, from the cache alone
    assert not list(client.dir.glob(".*.tmp"))


@pytest.fixture
def proxy_factory() -> Iterator[type[TamperingProxy]]:
    started: list[TamperingProxy] = []

    class Started(TamperingProxy):
        def __post_init__(self) -> None:
            super().__post_init__()
            started.append(self)

    yield Started
    for p in started:
        p.stop()


def test_device_sync_end_to_end_then_offline_recognize(
    make_server: ServerFactory, db_url: str, tiny_models_dir: Path, tmp_path: Path
) -> None:
    recognizer_mod = pytest.importorskip("coinvision.sdk.recognizer")
    # fp32 pack: the tiny random-weight test embedder puts all photos within ~1e-5 cosine of each other, which
    # int8/fp16 rounding would blur; the release model's margins are orders of magnitude wider.
    server = make_server(db_url, pack_quant="fp32")
    coins = sample_coins("coins211", n_coins=4, per_coin=1)
    populate(server, CATALOG, coins[:3])
    v1 = server.post(f"/v1/catalogs/{CATALOG}/publish").json()
    fingerprint = server.state.embedder().fingerprint

    client = _client(server.url, server, tmp_path / "cache", expected_fingerprint=fingerprint)
    first = client.sync()
    assert (first.version, first.updated, first.via) == (1, True, "full")
    assert first.downloaded_bytes == v1["pack"]["size"] and _sha(client.pack_path) == v1["pack"]["sha256"]
    again = client.sync()
    assert (again.updated, again.via, again.downloaded_bytes) == (False, "cache", 0)

    # the maintainer adds a coin and publishes v2: the device fetches only the delta
    populate(server, CATALOG, coins[3:])
    v2 = server.post(f"/v1/catalogs/{CATALOG}/publish").json()
    second = client.sync()
    assert (second.version, second.via) == (2, "delta")
    assert second.downloaded_bytes == v2["delta"]["size"] < v2["pack"]["size"]
    assert _sha(client.pack_path) == v2["pack"]["sha256"]  # delta applied = the published full pack, byte for byte

    server_answers = [
        server.post(f"/v1/catalogs/{CATALOG}/search?top_k=3", who="device",
                    files={"image": (images[0].name, images[0].read_bytes(), "image/jpeg")}).json()["matches"]
        for _, _, images in coins
    ]

    # the server goes away: syncing fails cleanly, recognition keeps working from the cache
    server.local.stop()
    with pytest.raises(SyncError, match="cannot reach"):
        client.sync()
    _assert_last_good_kept(client, 2, v2["pack"]["sha256"])
    offline = SyncClient("http://127.0.0.1:9", CATALOG, tmp_path / "cache", server.public_key)
    recognizer = recognizer_mod.Recognizer.from_dir(tiny_models_dir, runtime="tflite", pack=offline.load_pack())
    assert recognizer.fingerprint == fingerprint
    for (coin_id, label, images), online in zip(coins, server_answers, strict=True):
        result = recognizer.recognize(images[0], top_k=3)
        assert result.matches[0].coin_id == coin_id, (coin_id, [(m.coin_id, m.score) for m in result.matches])
        assert result.matches[0].label == label and result.matches[0].record.country == "x"
        # the phone (TFLite, downloaded pack) ranks like the server (ONNX Runtime, Faiss) did
        assert [m.coin_id for m in result.matches] == [m["coin_id"] for m in online]
        np.testing.assert_allclose([m.score for m in result.matches], [m["score"] for m in online], atol=1e-4)


@pytest.fixture
def published(sqlite_server: Server, tmp_path: Path) -> tuple[Server, SyncClient, dict, dict]:
    """A server with v1 and v2 published (v2 = v1 + one coin) and a device that synced v1."""
    coins = sample_coins("coins211", n_coins=3, per_coin=1)
    populate(sqlite_server, CATALOG, coins[:2])
    v1 = sqlite_server.post(f"/v1/catalogs/{CATALOG}/publish").json()
    client = _client(sqlite_server.url, sqlite_server, tmp_path / "cache")
    assert client.sync().version == 1
    populate(sqlite_server, CATALOG, coins[2:])
    v2 = sqlite_server.post(f"/v1/catalogs/{CATALOG}/publish").json()
    return sqlite_server, client, v1, v2


def test_sync_refuses_tampered_manifest_signature(published, proxy_factory, tmp_path: Path) -> None:
    server, client, v1, _ = published

    def bump_version(path: str, body: bytes) -> bytes | None:
        if not path.endswith("/manifest"):
            return None
        doc = json.loads(body)
        doc["payload"]["version"] += 5  # any change to the signed payload
        return json.dumps(doc).encode()

    proxy = proxy_factory(server.url, rewrite=bump_version)
    with pytest.raises(SyncError, match="signature"):
        _client(proxy.url, server, tmp_path / "cache").sync()
    _assert_last_good_kept(client, 1, v1["pack"]["sha256"])
    # a manifest signed by someone else's key is refused the same way
    other_key = public_key_b64(load_or_create_key(tmp_path / "attacker.pem"))
    impostor = SyncClient(server.url, CATALOG, tmp_path / "cache", other_key, token=server.local.device_token)
    with pytest.raises(SyncError, match="signature"):
        impostor.sync()
    _assert_last_good_kept(client, 1, v1["pack"]["sha256"])


def test_sync_refuses_rollback_to_an_older_signed_manifest(published, proxy_factory, tmp_path: Path) -> None:
    server, client, _, _ = published
    # an attacker records a genuine, signed, unexpired manifest (v2) and replays it once v3 is out
    old_manifest = server.get(f"/v1/catalogs/{CATALOG}/manifest", who="device").content
    assert json.loads(old_manifest)["payload"]["version"] == 2
    assert client.sync().version == 2
    assert server.post(f"/v1/catalogs/{CATALOG}/publish").status_code == 201
    assert client.sync().version == 3
    v3_sha = _sha(client.pack_path)
    proxy = proxy_factory(server.url, rewrite=lambda path, body: old_manifest if path.endswith("/manifest") else None)
    with pytest.raises(SyncError, match="rollback"):
        _client(proxy.url, server, tmp_path / "cache").sync()
    _assert_last_good_kept(client, 3, v3_sha)


def test_sync_refuses_expired_manifest(make_server: ServerFactory, proxy_factory, tmp_path: Path) -> None:
    server = make_server(manifest_ttl_s=1)
    populate(server, CATALOG, sample_coins("coins211", n_coins=2, per_coin=1))
    v1 = server.post(f"/v1/catalogs/{CATALOG}/publish").json()
    client = _client(server.url, server, tmp_path / "cache")
    captured = server.get(f"/v1/catalogs/{CATALOG}/manifest", who="device").content
    assert client.sync().version == 1
    time.sleep(2.1)  # the captured manifest expires (1 s TTL, whole seconds)
    proxy = proxy_factory(server.url, rewrite=lambda path, body: captured if path.endswith("/manifest") else None)
    with pytest.raises(SyncError, match="expired"):
        _client(proxy.url, server, tmp_path / "cache").sync()
    _assert_last_good_kept(client, 1, v1["pack"]["sha256"])


@pytest.mark.parametrize("use_delta", [False, True], ids=["full", "delta"])
def test_sync_refuses_tampered_pack_bytes(published, proxy_factory, tmp_path: Path, use_delta: bool) -> None:
    server, client, v1, _ = published
    target = "/delta" if use_delta else "/pack"

    def flip_a_byte(path: str, body: bytes) -> bytes | None:
        if not path.endswith(target):
            return None
        return body[:100] + bytes([body[100] ^ 0x01]) + body[101:]

    proxy = proxy_factory(server.url, rewrite=flip_a_byte)
    with pytest.raises(SyncError, match="sha256"):
        _client(proxy.url, server, tmp_path / "cache", use_delta=use_delta).sync()
    assert any(path.endswith(target) for path, _ in proxy.requests)
    _assert_last_good_kept(client, 1, v1["pack"]["sha256"])
    assert not list((client.dir / "downloads").glob("*.part"))  # the corrupt download is not kept to resume


def test_sync_refuses_pack_of_another_model(published, tmp_path: Path, tiny_models_dir: Path) -> None:
    server, client, v1, _ = published
    other = _client(server.url, server, tmp_path / "cache", expected_fingerprint="f" * 16)
    with pytest.raises(SyncError, match="f" * 16):
        other.sync()
    _assert_last_good_kept(client, 1, v1["pack"]["sha256"])
    # the device's recognizer refuses such a pack too, and keeps the one it had
    recognizer_mod = pytest.importorskip("coinvision.sdk.recognizer")
    recognizer = recognizer_mod.Recognizer.from_dir(tiny_models_dir, runtime="tflite", pack=client.pack_path)
    good = client.load_pack()
    foreign = packlib.build_pack(
        good.vectors_f32(), good.coin_ids, list(good.records.values()), catalog_id=CATALOG, catalog_version=9,
        model_fingerprint="f" * 16,
    )
    with pytest.raises(PackFingerprintError):
        recognizer.load_pack(foreign)
    assert recognizer.pack is not None and recognizer.pack.catalog_version == 1


def test_interrupted_download_resumes_with_range(published, proxy_factory, tmp_path: Path) -> None:
    server, client, v1, v2 = published
    proxy = proxy_factory(server.url, cut_after=v2["pack"]["size"] // 2)
    device = _client(proxy.url, server, tmp_path / "cache", use_delta=False)
    with pytest.raises(SyncError, match="interrupted"):
        device.sync()
    _assert_last_good_kept(client, 1, v1["pack"]["sha256"])
    parts = list((client.dir / "downloads").glob("*.part"))
    assert len(parts) == 1 and 0 < parts[0].stat().st_size < v2["pack"]["size"]

    proxy.cut_after = None  # the connection is back
    done = device.sync()
    assert done.version == 2 and done.downloaded_bytes == v2["pack"]["size"] - v2["pack"]["size"] // 2
    ranges = [rng for path, rng in proxy.requests if path.endswith("/pack")]
    assert ranges == [None, f"bytes={v2['pack']['size'] // 2}-"]
    assert _sha(client.pack_path) == v2["pack"]["sha256"]


def test_manifest_payload_is_what_the_device_checks(published) -> None:
    server, _, _, v2 = published
    doc = server.get(f"/v1/catalogs/{CATALOG}/manifest", who="device").json()
    payload = doc["payload"]
    assert set(doc) == {"payload", "signature", "key_id"} and len(base64.b64decode(doc["signature"])) == 64
    assert payload["catalog_id"] == CATALOG and payload["version"] == 2
    assert payload["pack"] == v2["pack"] and payload["delta"] == v2["delta"]
    assert payload["model_fingerprint"] == server.state.embedder().fingerprint
    assert payload["expires_at"] > payload["issued_at"]


def test_corrupted_cache_is_detected_and_repaired_by_the_next_sync(published) -> None:
    """The probe's attack: flip one byte of the cached pack; sync() said "cache" while load_pack() raised."""
    _, client, _, v2 = published
    assert client.sync().version == 2
    data = bytearray(client.pack_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    client.pack_path.write_bytes(bytes(data))
    assert not client.cache_intact()
    with pytest.raises(SyncError, match="corrupt"):
        client.load_pack()
    repaired = client.sync()  # same server version: nothing new to publish, the cache is still repaired
    assert (repaired.version, repaired.updated, repaired.via) == (2, True, "repair")
    assert repaired.downloaded_bytes == v2["pack"]["size"]  # the full pack: a delta must not patch bad bytes
    _assert_last_good_kept(client, 2, v2["pack"]["sha256"])
    assert client.sync().via == "cache"
    # a cache truncated to nothing is repaired the same way
    client.pack_path.write_bytes(b"")
    assert client.sync().via == "repair" and client.load_pack().catalog_version == 2
