"""The JSON API on a real loopback server: the maintainer flow, search, duplicates, auth, bad input."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from coinvision.sdk.images import load_image
from coinvision.sync_server.models import ReferenceImage
from PIL import Image
from sqlalchemy import func, select

from tests.sync_server.helpers import Server, ServerFactory, populate, sample_coins


def _image_rows(server: Server) -> int:
    with server.state.sessions() as s:
        return s.scalar(select(func.count()).select_from(ReferenceImage)) or 0


def _stored_files(server: Server) -> list[Path]:
    return [p for p in server.state.config.images_dir.rglob("*") if p.is_file()]


def test_maintainer_flow_upload_search_publish(server: Server) -> None:
    coins = sample_coins("coins211", n_coins=4, per_coin=2)
    populate(server, "world", coins)
    cat = server.get("/v1/catalogs/world").json()
    assert [c["coin_id"] for c in cat["coins"]] == sorted(c[0] for c in coins)
    assert all(c["image_count"] == 2 for c in cat["coins"])

    # a reference photo finds its own coin first, at cosine ~1 (same model, same preprocessing)
    coin_id, _, images = coins[2]
    r = server.post("/v1/catalogs/world/search?top_k=3", who="device",
                    files={"image": (images[0].name, images[0].read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["matches"][0]["coin_id"] == coin_id and body["matches"][0]["score"] > 0.999
    assert len({m["coin_id"] for m in body["matches"]}) == 3 and body["index_size"] == 8

    # the same search with the embedding the device computed
    vec = server.state.embedder().embed(load_image(images[0])).vector
    r = server.post("/v1/catalogs/world/search", who="device", json={"embedding": vec.tolist()})
    assert r.json()["matches"][0]["coin_id"] == coin_id

    r = server.post("/v1/catalogs/world/publish")
    assert r.status_code == 201, r.text
    v1 = r.json()
    assert v1["version"] == 1 and v1["coin_count"] == 4 and v1["vector_count"] == 8 and v1["delta"] is None
    listed = server.get("/v1/catalogs", who="device").json()["catalogs"]
    assert listed == [{"id": "world", "name": "world", "coin_count": 4, "latest_version": 1}]


def test_search_returns_overlay_and_thumbnails(sqlite_server: Server) -> None:
    populate(sqlite_server, "c", sample_coins("euro_phone", n_coins=2, per_coin=1))
    img = sample_coins("euro_phone", n_coins=1, per_coin=1)[0][2][0]
    r = sqlite_server.post("/v1/catalogs/c/search?overlay=1&thumbnails=1",
                           files={"image": ("q.jpg", img.read_bytes(), "image/jpeg")})
    body = r.json()
    assert body["segmentation"]["overlay"].startswith("data:image/png;base64,")
    assert all(m["thumbnail"].startswith("data:image/jpeg;base64,") for m in body["matches"])
    thumb = sqlite_server.get(f"/v1/images/{body['matches'][0]['reference_image_id']}/thumbnail", who="device")
    assert thumb.headers["Content-Type"] == "image/jpeg" and Image.open(io.BytesIO(thumb.content)).size[0] <= 160


def test_index_follows_deletes_and_other_workers(make_server: ServerFactory, tmp_path: Path) -> None:
    a = make_server(data_dir=tmp_path / "shared")
    coins = sample_coins("coins211", n_coins=3, per_coin=1)
    populate(a, "c", coins)
    # a second worker on the same database and data dir (as gunicorn runs them)
    b = make_server(data_dir=tmp_path / "shared")
    probe = coins[0][2][0]

    def top(server: Server) -> list[str]:
        r = server.post("/v1/catalogs/c/search", files={"image": ("q.jpg", probe.read_bytes(), "image/jpeg")})
        return [m["coin_id"] for m in r.json()["matches"]]

    assert top(a) == top(b) and top(b)[0] == coins[0][0]
    assert a.delete(f"/v1/catalogs/c/coins/{coins[0][0]}").status_code == 200
    assert coins[0][0] not in top(a)
    assert coins[0][0] not in top(b)  # b's index was stale (generation moved on) and was rebuilt


def test_near_duplicates_flagged_and_strict_publish_refused(sqlite_server: Server) -> None:
    s = sqlite_server
    img = sample_coins("coins211", n_coins=1, per_coin=1)[0][2][0]
    populate(s, "dup", [("coin-a", "A", [img]), ("coin-b", "B", [img])])  # same photo under two coins
    pairs = s.get("/v1/catalogs/dup/duplicates").json()["pairs"]
    assert [(p["coin_a"], p["coin_b"]) for p in pairs] == [("coin-a", "coin-b")] and pairs[0]["cosine"] > 0.999
    r = s.post("/v1/catalogs/dup/publish", json={"strict": True})
    assert r.status_code == 409 and r.json()["code"] == "near_duplicates" and r.json()["detail"]
    assert s.get("/v1/catalogs/dup/versions").json()["versions"] == []
    r = s.post("/v1/catalogs/dup/publish")
    assert r.status_code == 201 and r.json()["near_duplicates"]


@pytest.mark.parametrize(
    ("method", "path", "who", "status"),
    [
        ("get", "/v1/catalogs", None, 401),
        ("get", "/v1/catalogs", "bogus", 401),
        ("post", "/v1/catalogs", "device", 403),
        ("put", "/v1/catalogs/c/coins/x", "device", 403),
        ("post", "/v1/catalogs/c/publish", "device", 403),
        ("get", "/v1/catalogs/c/duplicates", "device", 403),
        ("get", "/v1/catalogs/c/manifest", None, 401),
        ("get", "/v1/catalogs/c/versions/1/pack", "bogus", 401),
    ],
)
def test_auth_missing_invalid_or_wrong_scope(sqlite_server: Server, method: str, path: str, who: str | None,
                                             status: int) -> None:
    headers = {} if who is None else sqlite_server.headers(who) if who != "bogus" else {
        "Authorization": "Bearer cv_not-a-real-token"}
    r = requests.request(method, sqlite_server.url + path, headers=headers, json={}, timeout=10)
    assert r.status_code == status
    assert set(r.json()) == {"code", "message", "detail"}


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims a huge canvas (what a decompression bomb looks like before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_uploads_are_refused_and_nothing_is_written(make_server: ServerFactory) -> None:
    s = make_server(max_images_per_request=2, max_image_bytes=200_000)
    assert s.post("/v1/catalogs", json={"id": "c"}).status_code == 201
    assert s.put("/v1/catalogs/c/coins/coin-1", json={"label": "one"}).status_code == 201
    good = sample_coins("coins211", n_coins=1, per_coin=1)[0][2][0].read_bytes()
    url = "/v1/catalogs/c/coins/coin-1/images"
    cases = {
        "unsupported_image_format": [("image", ("a.jpg", b"this is not a photo", "image/jpeg"))],
        "bad_image": [("image", ("a.jpg", good[: len(good) // 2], "image/jpeg"))],  # truncated JPEG
        "too_many_pixels": [("image", ("bomb.png", _png_header_only(12000, 12000), "image/png"))],
        "bad_filename": [("image", ("../../etc/evil.jpg", good, "image/jpeg"))],
        "unsupported_media_type": [("image", ("a.txt", good, "text/plain"))],
        "too_many_images": [("image", (f"{i}.jpg", good, "image/jpeg")) for i in range(3)],
        "image_too_large": [("image", ("big.jpg", good + b"\0" * 200_000, "image/jpeg"))],
        "empty_image": [("image", ("e.jpg", b"", "image/jpeg"))],
    }
    for code, files in cases.items():
        # a good image in the same request must not be stored either
        r = s.post(url, files=[("image", ("ok.jpg", good, "image/jpeg")), *files] if code != "too_many_images"
                   else files)
        assert 400 <= r.status_code < 500, (code, r.status_code, r.text)
        assert r.json()["code"] == code, r.text
    r = s.post(url, json={"image": "x"})
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"
    assert _image_rows(s) == 0 and _stored_files(s) == []
    r = s.post(url, files=[("image", ("ok.jpg", good, "image/jpeg"))])
    assert r.status_code == 201 and _image_rows(s) == 1 and len(_stored_files(s)) == 1


def test_bad_json_and_unknown_ids_give_json_errors(sqlite_server: Server) -> None:
    s = sqlite_server
    r = s.post("/v1/catalogs", data="{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "malformed_json"
    r = s.post("/v1/catalogs", json=["a", "list"])
    assert r.status_code == 400 and r.json()["code"] == "malformed_json"
    r = s.post("/v1/catalogs", data="[" * 100_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "malformed_json"  # nesting too deep to parse
    r = s.post("/v1/catalogs", data="id=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    assert s.post("/v1/catalogs", json={"id": "../etc"}).json()["code"] == "bad_catalog_id"
    assert s.post("/v1/catalogs", json={"id": "c"}).status_code == 201
    assert s.post("/v1/catalogs", json={"id": "c"}).status_code == 409
    assert s.put("/v1/catalogs/c/coins/a%2F..", json={}).status_code in (400, 404)
    assert s.put("/v1/catalogs/c/coins/ok", json={"label": 5}).json()["code"] == "bad_field"
    for path, code in [
        ("/v1/catalogs/nope", "catalog_not_found"),
        ("/v1/catalogs/c/manifest", "not_published"),
        ("/v1/catalogs/c/versions/9/pack", "version_not_found"),
        ("/v1/images/12345/thumbnail", "image_not_found"),
        ("/v1/no/such/route", "not_found"),
    ]:
        r = s.get(path)
        assert r.status_code == 404 and r.json()["code"] == code, (path, r.text)
    assert s.delete("/v1/catalogs/c/coins/ghost").json()["code"] == "coin_not_found"
    r = s.post("/v1/catalogs/c/search", json={"embedding": [0, 0, 0]})
    assert r.status_code == 400 and r.json()["code"] == "bad_embedding"
    r = s.post("/v1/catalogs/c/search?top_k=0", json={"embedding": [1.0]})
    assert r.json()["code"] == "bad_top_k"
    assert s.post("/v1/catalogs/c/publish").json()["code"] == "nothing_to_publish"


def test_search_by_embedding_of_wrong_dimension_is_refused(sqlite_server: Server) -> None:
    populate(sqlite_server, "c", sample_coins("coins211", n_coins=1, per_coin=1))
    r = sqlite_server.post("/v1/catalogs/c/search", json={"embedding": np.ones(7).tolist()})
    assert r.status_code == 400 and "dimensions" in r.json()["message"]


def test_coin_metadata_is_checked_before_the_database_sees_it(server: Server) -> None:
    s = server
    assert s.post("/v1/catalogs", json={"id": "c"}).status_code == 201
    url = "/v1/catalogs/c/coins/coin-1"
    bad = [
        ({"country": "x" * 101}, "bad_field"),  # PostgreSQL would refuse it (varchar(100)); SQLite would keep it
        ({"side": "obverse" * 10}, "bad_field"),
        ({"label": "nul\x00byte"}, "bad_field"),
        ({"label": "lone \ud800 surrogate"}, "bad_field"),
        ({"extra": {"": "empty key"}}, "bad_field"),
        ({"extra": {"mint": 5}}, "bad_field"),
        ({"extra": {"nested": {"a": "b"}}}, "bad_field"),
        ({"extra": ["not", "a", "map"]}, "bad_field"),
        ({"labell": "typo"}, "unknown_field"),
    ]
    for body, code in bad:
        r = s.put(url, json=body)
        assert r.status_code == 400 and r.json()["code"] == code, (body, r.text)
    assert s.get("/v1/catalogs/c/coins").json()["coins"] == []
    assert s.post("/v1/catalogs", json={"id": "d", "name": "tab\tname"}).json()["code"] == "bad_name"
    assert s.post("/v1/catalogs/c/publish", json={"strict": "yes"}).json()["code"] == "bad_field"
    assert s.get("/v1/catalogs/c/duplicates?min_cosine=nan").json()["code"] == "bad_threshold"
    # ids far beyond the columns' integer range are unknown ids, not server errors
    assert s.get("/v1/images/99999999999999999999/thumbnail").status_code in (400, 404)
    assert s.get(f"/v1/catalogs/c/versions/{2**40}/pack", who="device").status_code in (400, 404)

    # valid metadata, extra included, travels into the published pack's record
    meta = {"label": "1 euro", "country": "Europe", "currency": "EUR", "denomination": "1", "side": "reverse",
            "years": "2002-", "extra": {"mint": "Paris"}}
    assert s.put(url, json=meta).status_code == 201
    img = sample_coins("coins211", n_coins=1, per_coin=1)[0][2][0]
    assert s.post(url + "/images", files={"image": (img.name, img.read_bytes(), "image/jpeg")}).status_code == 201
    from coinvision.sdk import pack as packlib

    v = s.post("/v1/catalogs/c/publish").json()
    record = packlib.read_pack(s.get(v["pack"]["url"], who="device").content).records["coin-1"]
    assert (record.label, record.country, record.side, record.extra) == ("1 euro", "Europe", "reverse",
                                                                         {"mint": "Paris"})


def test_request_over_the_size_limit_is_refused_with_json(make_server: ServerFactory) -> None:
    s = make_server(max_request_bytes=100_000)
    populate(s, "c", [])
    assert s.put("/v1/catalogs/c/coins/a", json={}).status_code == 201
    big = b"\xff\xd8" + b"\0" * 150_000
    r = s.post("/v1/catalogs/c/coins/a/images", files={"image": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413 and set(r.json()) == {"code", "message", "detail"}
    assert _image_rows(s) == 0 and _stored_files(s) == []
    r = s.post("/v1/catalogs", data=b"{" * 200_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
