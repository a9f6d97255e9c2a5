"""Regression tests for the security probe's failures (issue 15), each reproducing the attack on a real server.

Upload format and pixel limits, the search rate limit, lone surrogates, forged version rows, caching headers,
malformed Range headers, security headers and file modes. The device-side cache repair is in
test_device_sync.py; the CLI (keys, tokens, cleanup) in test_cli_security.py.
"""

from __future__ import annotations

import hashlib
import io
import stat
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from coinvision.sdk.errors import SyncError
from coinvision.sdk.sync_client import SyncClient
from coinvision.sync_server.api_errors import ApiError
from coinvision.sync_server.auth import create_token, hash_token, revoke_token
from coinvision.sync_server.models import ApiToken, CatalogVersion, ReferenceImage
from coinvision.sync_server.ratelimit import RateLimiter
from PIL import Image
from sqlalchemy import func, select, update

from tests.sync_server.helpers import Server, ServerFactory, populate, sample_coins


def _photo() -> Path:
    return sample_coins("coins211", n_coins=1, per_coin=1)[0][2][0]


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _image_rows(server: Server) -> int:
    with server.state.sessions() as s:
        return s.scalar(select(func.count()).select_from(ReferenceImage)) or 0


def _stored_files(server: Server) -> list[Path]:
    return [p for p in server.state.config.images_dir.rglob("*") if p.is_file()]


def _new_coin(s: Server, catalog: str = "c", coin: str = "coin-1") -> str:
    assert s.post("/v1/catalogs", json={"id": catalog}).status_code in (201, 409)
    assert s.put(f"/v1/catalogs/{catalog}/coins/{coin}", json={"label": "one"}).status_code in (200, 201)
    return f"/v1/catalogs/{catalog}/coins/{coin}/images"


# ------------------------------------------------------------------ 1. formats by content, pixel budgets, rate limit
def test_upload_accepts_jpeg_png_webp_and_refuses_other_formats_whatever_the_declared_type(
    sqlite_server: Server,
) -> None:
    s = sqlite_server
    url = _new_coin(s)
    photo = Image.open(_photo()).convert("RGB")
    frames = [photo.rotate(a) for a in range(0, 360, 30)]
    refused = {
        "gif": _encode(photo, "GIF"),
        "ico": _encode(photo, "ICO"),
        "pcx": _encode(photo, "PCX"),
        "bmp": _encode(photo, "BMP"),
        "tiff": _encode(photo, "TIFF"),
        "tga": _encode(photo, "TGA"),
        "ppm": _encode(photo, "PPM"),
    }
    for name, data in refused.items():
        # declared as JPEG, named .jpg: only the bytes decide
        r = s.post(url, files={"image": (f"{name}.jpg", data, "image/jpeg")})
        assert r.status_code == 415 and r.json()["code"] == "unsupported_image_format", (name, r.text)
    small = photo.resize((48, 48))
    many = [small.rotate(i % 360) for i in range(300)]  # the probe's 300-frame GIF
    animated = {
        "gif300": ("image/jpeg", _encode(many[0], "GIF", save_all=True, append_images=many[1:])),
        "apng": ("image/png", _encode(frames[0], "PNG", save_all=True, append_images=frames[1:])),
        "animated-webp": ("image/webp", _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])),
    }
    for name, (ctype, data) in animated.items():
        r = s.post(url, files={"image": (f"{name}.img", data, ctype)})
        code = r.json()["code"]
        assert r.status_code == 415 and code in ("multi_frame_image", "unsupported_image_format"), (name, r.text)
        if name != "gif300":
            assert code == "multi_frame_image", (name, r.text)
    assert _image_rows(s) == 0 and _stored_files(s) == []

    for fmt, ctype in (("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")):
        r = s.post(url, files={"image": (f"ok.{fmt.lower()}", _encode(photo, fmt), ctype)})
        assert r.status_code == 201, (fmt, r.text)
    assert _image_rows(s) == 3
    # the search route applies the same allow-list
    r = s.post("/v1/catalogs/c/search", who="device", files={"image": ("q.jpg", refused["gif"], "image/jpeg")})
    assert r.status_code == 415 and r.json()["code"] == "unsupported_image_format"


def _huge_png(side: int) -> bytes:
    """A flat grey PNG: tens of megapixels in a few tens of kB (the probe's 116 kB, 39.7 MP file)."""
    return _encode(Image.new("L", (side, side), 128), "PNG", optimize=True)


def test_pixel_budget_per_request_and_lower_limit_for_search(sqlite_server: Server) -> None:
    s = sqlite_server
    url = _new_coin(s)
    bomb = _huge_png(6300)  # 39.7 MP: under the 40 MP per-image limit, so each file alone would be decoded
    assert len(bomb) < 200_000
    # 16 of them in one upload (the probe: 13.6 s of CPU and +400 MB): refused from the headers, nothing decoded
    r = s.post(url, files=[("image", (f"{i}.png", bomb, "image/png")) for i in range(16)])
    assert r.status_code == 413 and r.json()["code"] == "too_many_pixels", r.text
    assert "per request" in r.json()["message"]
    # search (reachable with the device token every app ships) has a lower limit than uploads
    r = s.post("/v1/catalogs/c/search", who="device", files={"image": ("q.png", bomb, "image/png")})
    assert r.status_code == 413 and r.json()["code"] == "too_many_pixels", r.text
    assert "16 MP" in r.json()["message"]
    assert _image_rows(s) == 0 and _stored_files(s) == []


def test_pixel_budget_counts_every_file_of_the_request(make_server: ServerFactory) -> None:
    photos = [p for _, _, ps in sample_coins("coins211", n_coins=3, per_coin=1) for p in ps]
    sizes = [Image.open(p).size for p in photos]
    budget = sum(w * h for w, h in sizes) - 1  # one pixel short of the three real photos together
    s = make_server(max_request_pixels=budget)
    url = _new_coin(s)
    files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    r = s.post(url, files=files)
    assert r.status_code == 413 and r.json()["code"] == "too_many_pixels"
    assert s.post(url, files=files[:2]).status_code == 201


def test_photo_search_is_rate_limited_per_client(make_server: ServerFactory) -> None:
    s = make_server(search_per_minute=6, search_burst=2)
    populate(s, "c", sample_coins("coins211", n_coins=1, per_coin=1))
    photo = _photo().read_bytes()

    def search() -> object:
        return s.post("/v1/catalogs/c/search", who="device", files={"image": ("q.jpg", photo, "image/jpeg")})

    assert [search().status_code for _ in range(2)] == [200, 200]
    r = search()
    assert r.status_code == 429 and r.json()["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 10
    # searching with an embedding the device computed costs no decoding and is not limited
    vec = [1.0] + [0.0] * 63
    assert s.post("/v1/catalogs/c/search", who="device", json={"embedding": vec}).status_code == 200


def test_rate_limiter_refills_at_its_rate() -> None:
    limiter = RateLimiter(per_minute=60, burst=2)
    limiter.take("a", "x", now=0.0)
    limiter.take("a", "x", now=0.0)
    with pytest.raises(ApiError, match="retry in 1 s") as err:
        limiter.take("a", "x", now=0.1)
    assert err.value.status == 429 and err.value.headers == {"Retry-After": "1"}
    limiter.take("b", "x", now=0.1)  # another client has its own bucket
    limiter.take("a", "x", now=1.2)  # one token back after a second


# ------------------------------------------------------------------ 2. lone surrogate in a catalog name
def test_catalog_name_with_lone_surrogate_is_400_not_500(server: Server) -> None:
    s = server
    for body in ('{"id": "x", "name": "\\ud800"}', '{"id": "x", "name": "ok \\udfff end"}'):
        r = s.post("/v1/catalogs", data=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] == "bad_name", r.text
    assert s.post("/v1/catalogs", json={"id": "x", "name": "Münzen €"}).status_code == 201
    r = s.patch("/v1/catalogs/x", data='{"name": "\\ud800"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "bad_name"
    assert s.get("/v1/catalogs").json()["catalogs"][0]["name"] == "Münzen €"


# ------------------------------------------------------------------ 3. forged version rows
@pytest.fixture
def two_versions(server: Server) -> tuple[Server, dict, dict]:
    coins = sample_coins("coins211", n_coins=3, per_coin=1)
    populate(server, "c", coins[:2])
    v1 = server.post("/v1/catalogs/c/publish").json()
    populate(server, "c", coins[2:])
    v2 = server.post("/v1/catalogs/c/publish").json()
    return server, v1, v2


def test_database_edit_cannot_push_a_forged_pack(two_versions, tmp_path: Path) -> None:
    s, v1, _ = two_versions
    device = SyncClient(s.url, "c", tmp_path / "cache", s.public_key, token=s.local.device_token)
    assert device.sync().version == 2
    # the probe's attack: point the newest row at another pack file and its sha256 (here: v1's, a real pack)
    with s.state.sessions() as db:
        row = db.scalar(select(CatalogVersion).where(CatalogVersion.version == 1))
        assert row.pack_sha256 == v1["pack"]["sha256"]
        db.execute(update(CatalogVersion).where(CatalogVersion.version == 2).values(
            pack_file=row.pack_file, pack_sha256=row.pack_sha256, pack_size=row.pack_size))
        db.commit()
    r = s.get("/v1/catalogs/c/manifest", who="device")
    assert r.status_code == 500 and r.json()["code"] == "version_record_invalid", r.text
    r = s.get("/v1/catalogs/c/versions/2/pack", who="device")
    assert r.status_code == 500 and r.json()["code"] == "version_record_invalid"
    with pytest.raises(SyncError, match="500"):
        device.sync()
    assert device.load_pack().catalog_version == 2  # the device keeps its last good pack
    # untouched versions are still served
    assert s.get("/v1/catalogs/c/versions/1/pack", who="device").status_code == 200


@pytest.mark.parametrize("field", ["coin_count", "model_fingerprint", "record_signature", "delta_sha256"])
def test_any_edit_of_a_version_row_is_refused(two_versions, field: str) -> None:
    s, _, _ = two_versions
    value = {"coin_count": 99, "model_fingerprint": "f" * 16, "record_signature": None, "delta_sha256": "0" * 64}
    with s.state.sessions() as db:
        db.execute(update(CatalogVersion).where(CatalogVersion.version == 2).values({field: value[field]}))
        db.commit()
    assert s.get("/v1/catalogs/c/manifest", who="device").json()["code"] == "version_record_invalid"


def test_pack_file_replaced_on_disk_is_not_served(sqlite_server: Server) -> None:
    s = sqlite_server
    populate(s, "c", sample_coins("coins211", n_coins=2, per_coin=1))
    v1 = s.post("/v1/catalogs/c/publish").json()
    (path,) = (s.state.config.packs_dir / "c").glob("v1-*.pack")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    r = s.get(v1["pack"]["url"], who="device")
    assert r.status_code == 500 and r.json()["code"] == "pack_corrupt"


# ------------------------------------------------------------------ 5, 7, 8. headers
def test_pack_caching_is_private_and_bad_range_is_ignored(sqlite_server: Server) -> None:
    s = sqlite_server
    populate(s, "c", sample_coins("coins211", n_coins=2, per_coin=1))
    v = s.post("/v1/catalogs/c/publish").json()
    full = s.get(v["pack"]["url"], who="device")
    cache_control = {d.strip() for d in full.headers["Cache-Control"].split(",")}
    assert "private" in cache_control and "public" not in cache_control and "immutable" in cache_control
    for bad in ("bytes=abc", "bytes=9-3", "pages=1-2", "bytes=", "bytes=-"):
        r = s.get(v["pack"]["url"], who="device", headers={"Range": bad})
        assert r.status_code == 200 and r.content == full.content, (bad, r.status_code)
    assert s.get(v["pack"]["url"], who="device", headers={"Range": "bytes=0-9"}).status_code == 206
    assert hashlib.sha256(full.content).hexdigest() == v["pack"]["sha256"]


def test_security_headers_and_no_versions_in_server_header(sqlite_server: Server) -> None:
    s = sqlite_server
    for path in ("/", "/v1/catalogs", "/v1/nope", "/openapi.json", "/v1/health"):
        h = requests.get(s.url + path, headers=s.headers(), timeout=10).headers
        csp = h["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert h["X-Frame-Options"] == "DENY" and h["X-Content-Type-Options"] == "nosniff", path
        assert h["Referrer-Policy"] == "no-referrer", path
        assert h["Server"] == "coinvision", (path, h["Server"])


def test_data_dir_database_and_key_are_private(make_server: ServerFactory, tmp_path: Path) -> None:
    data = tmp_path / "open"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    s = make_server(data_dir=data)  # an existing, world-readable data dir is tightened at start
    populate(s, "c", sample_coins("coins211", n_coins=1, per_coin=1))

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(data) == 0o700
    db = Path(s.state.engine.url.database)
    assert db.parent == data and mode(db) == 0o600
    wal = db.with_name(db.name + "-wal")
    assert not wal.exists() or mode(wal) == 0o600
    assert mode(s.state.config.key_path) == 0o600
    fresh = make_server(data_dir=tmp_path / "new" / "data")
    assert mode(fresh.state.config.data_dir) == 0o700
    assert mode(Path(fresh.state.engine.url.database)) == 0o600


# ------------------------------------------------------------------ 8. deleting removes photos; old packs go
def test_deleting_images_and_coins_removes_their_photos(sqlite_server: Server) -> None:
    s = sqlite_server
    photo = _photo()
    populate(s, "c", [("a", "A", [photo]), ("b", "B", [photo])])  # one photo file shared by two references
    populate(s, "c", [("d", "D", [sample_coins("coins211", n_coins=2, per_coin=1)[1][2][0]])])
    assert len(_stored_files(s)) == 2
    images = s.get("/v1/catalogs/c/coins/a").json()["images"]
    r = s.delete(f"/v1/images/{images[0]['id']}")
    assert r.status_code == 200 and r.json()["photo_removed"] is False  # coin b still uses that photo
    assert len(_stored_files(s)) == 2
    r = s.delete("/v1/catalogs/c/coins/b")
    assert r.json()["photos_removed"] == 1 and len(_stored_files(s)) == 1
    r = s.delete("/v1/catalogs/c?confirm=c")
    assert r.status_code == 200 and _stored_files(s) == []
    assert not (s.state.config.packs_dir / "c").exists()


def test_catalog_delete_needs_confirmation(sqlite_server: Server) -> None:
    s = sqlite_server
    populate(s, "c", sample_coins("coins211", n_coins=1, per_coin=1))
    r = s.delete("/v1/catalogs/c")
    assert r.status_code == 400 and r.json()["code"] == "confirmation_required"
    assert s.delete("/v1/catalogs/c?confirm=other").status_code == 400
    assert s.get("/v1/catalogs/c").status_code == 200


def test_old_pack_files_are_removed_past_the_retention(make_server: ServerFactory, tmp_path: Path) -> None:
    s = make_server(pack_retention_versions=2)
    coins = sample_coins("coins211", n_coins=4, per_coin=1)
    device = SyncClient(s.url, "c", tmp_path / "cache", s.public_key, token=s.local.device_token)
    versions = []
    for i in range(4):
        populate(s, "c", coins[i : i + 1])
        versions.append(s.post("/v1/catalogs/c/publish").json())
        if i == 0:
            assert device.sync().version == 1
    files = sorted(p.name for p in (s.state.config.packs_dir / "c").iterdir())
    with s.state.sessions() as db:
        rows = db.scalars(select(CatalogVersion).where(CatalogVersion.version >= 3)).all()
        kept = sorted(n for r in rows for n in (r.pack_file, r.delta_file))
    assert files == kept and len(kept) == 4  # v3 and v4: pack + delta each
    r = s.get(versions[0]["pack"]["url"], who="device")
    assert r.status_code == 410 and r.json()["code"] == "pack_missing"
    assert len(s.get("/v1/catalogs/c/versions").json()["versions"]) == 4  # history stays
    # a device still on v1 (no delta from v1 any more) gets the newest full pack
    done = device.sync()
    assert (done.version, done.via) == (4, "full")


# ------------------------------------------------------------------ 8. idempotent publish
def test_publish_with_the_same_idempotency_key_makes_one_version(server: Server) -> None:
    s = server
    populate(s, "c", sample_coins("coins211", n_coins=2, per_coin=1))
    first = s.post("/v1/catalogs/c/publish", headers={"Idempotency-Key": "3f1c-retry-me"})
    assert first.status_code == 201
    retry = s.post("/v1/catalogs/c/publish", headers={"Idempotency-Key": "3f1c-retry-me"})
    assert retry.status_code == 200 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json()["version"] == first.json()["version"] == 1
    assert retry.json()["pack"] == first.json()["pack"]
    other = s.post("/v1/catalogs/c/publish", headers={"Idempotency-Key": "another"})
    assert other.status_code == 201 and other.json()["version"] == 2
    assert [v["version"] for v in s.get("/v1/catalogs/c/versions").json()["versions"]] == [1, 2]
    r = s.post("/v1/catalogs/c/publish", headers={"Idempotency-Key": "has space"})
    assert r.status_code == 400 and r.json()["code"] == "bad_idempotency_key"


# ------------------------------------------------------------------ token expiry
def test_expired_and_revoked_tokens_get_401(sqlite_server: Server) -> None:
    s = sqlite_server
    with s.state.sessions() as db:
        expired = create_token(db, "maintainer", "old", expires_in=timedelta(seconds=-1))
        live = create_token(db, "device", "app", expires_in=timedelta(hours=1))
    r = s.get("/v1/catalogs", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and r.json()["code"] == "token_expired"
    assert s.get("/v1/catalogs", headers={"Authorization": f"Bearer {live}"}).status_code == 200
    with s.state.sessions() as db:
        row = db.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(live)))
        revoke_token(db, row.id)
    assert s.get("/v1/catalogs", headers={"Authorization": f"Bearer {live}"}).status_code == 401
