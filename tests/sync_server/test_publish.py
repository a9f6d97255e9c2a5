"""Publishing: monotonic versions, full + delta packs, conditional/range downloads, crashes and concurrency."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from coinvision.sdk import pack as packlib
from coinvision.sync_server.models import CatalogVersion, Coin, ReferenceImage
from sqlalchemy import select

from tests.sync_server.helpers import Server, ServerFactory, populate, sample_coins


def test_publish_versions_are_monotonic_with_delta(server: Server) -> None:
    coins = sample_coins("coins211", n_coins=4, per_coin=1)
    populate(server, "c", coins[:3])
    v1 = server.post("/v1/catalogs/c/publish").json()
    populate(server, "c", coins[3:])
    assert server.delete(f"/v1/catalogs/c/coins/{coins[0][0]}").status_code == 200
    v2 = server.post("/v1/catalogs/c/publish").json()
    assert (v1["version"], v2["version"]) == (1, 2)
    assert v2["delta"]["from_version"] == 1 and v2["delta"]["url"].endswith("/versions/2/delta")

    full1 = server.get(v1["pack"]["url"], who="device").content
    full2 = server.get(v2["pack"]["url"], who="device").content
    delta = server.get(v2["delta"]["url"], who="device").content
    assert hashlib.sha256(full2).hexdigest() == v2["pack"]["sha256"] and len(full2) == v2["pack"]["size"]
    assert hashlib.sha256(delta).hexdigest() == v2["delta"]["sha256"]
    p1, p2 = packlib.read_pack(full1), packlib.read_pack(full2)
    assert (p1.catalog_version, p2.catalog_version) == (1, 2)
    assert sorted(set(p2.coin_ids)) == sorted(c[0] for c in coins[1:])
    rebuilt = packlib.apply_delta(p1, delta)
    assert sorted(set(rebuilt.coin_ids)) == sorted(set(p2.coin_ids)) and rebuilt.catalog_version == 2
    versions = server.get("/v1/catalogs/c/versions", who="device").json()["versions"]
    assert [v["version"] for v in versions] == [1, 2]


def test_publish_without_the_previous_pack_file_ships_no_delta(sqlite_server: Server) -> None:
    s = sqlite_server
    coins = sample_coins("coins211", n_coins=2, per_coin=1)
    populate(s, "c", coins[:1])
    v1 = s.post("/v1/catalogs/c/publish").json()
    for f in (s.state.config.packs_dir / "c").glob("v1-*.pack"):
        f.unlink()  # an operator cleaned the data dir by hand
    populate(s, "c", coins[1:])
    r = s.post("/v1/catalogs/c/publish")
    assert r.status_code == 201 and r.json()["version"] == 2 and r.json()["delta"] is None
    gone = s.get(v1["pack"]["url"], who="device")
    assert gone.status_code == 410 and gone.json()["code"] == "pack_missing"


def test_pack_download_etag_304_and_range_206(sqlite_server: Server) -> None:
    s = sqlite_server
    populate(s, "c", sample_coins("coins211", n_coins=2, per_coin=1))
    v = s.post("/v1/catalogs/c/publish").json()
    url, sha = v["pack"]["url"], v["pack"]["sha256"]
    full = s.get(url, who="device")
    assert full.status_code == 200 and full.headers["ETag"] == f'"{sha}"'
    assert full.headers["Accept-Ranges"] == "bytes"
    assert s.get(url, who="device", headers={"If-None-Match": f'"{sha}"'}).status_code == 304
    assert s.get(url, who="device", headers={"If-None-Match": '"other"'}).status_code == 200
    part = s.get(url, who="device", headers={"Range": "bytes=10-49"})
    assert part.status_code == 206 and part.content == full.content[10:50]
    assert part.headers["Content-Range"] == f"bytes 10-49/{len(full.content)}"
    tail = s.get(url, who="device", headers={"Range": f"bytes={len(full.content) - 7}-"})
    assert tail.status_code == 206 and tail.content == full.content[-7:]
    assert s.get(url, who="device", headers={"Range": f"bytes={len(full.content) + 5}-"}).status_code == 416


_KILL_SCRIPT = """
import os, signal, sys
from coinvision.sync_server import storage
from coinvision.sync_server.app import create_app
from coinvision.sync_server.config import ServerConfig

real_write = storage.write_atomic
def write_then_die(path, data):
    real_write(path, data)              # the new pack is on disk ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... and the worker dies before the database commit
storage.write_atomic = write_then_die
cfg = ServerConfig.resolve(data_dir=sys.argv[1], db_url=sys.argv[2], models_dir=sys.argv[3])
app = create_app(cfg)
app.test_client().post("/v1/catalogs/c/publish", headers={"Authorization": "Bearer " + sys.argv[4]})
print("publish finished: the worker was not killed")
"""


def test_worker_killed_mid_publish_leaves_previous_version_served(
    make_server: ServerFactory, db_url: str, tmp_path: Path, tiny_models_dir: Path
) -> None:
    s = make_server(db_url, data_dir=tmp_path / "data")
    coins = sample_coins("coins211", n_coins=3, per_coin=1)
    populate(s, "c", coins[:2])
    v1 = s.post("/v1/catalogs/c/publish").json()
    populate(s, "c", coins[2:])
    out = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, str(tmp_path / "data"), s.state.config.db_url, str(tiny_models_dir),
         s.local.maintainer_token],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert out.returncode == -9, out.stdout + out.stderr
    manifest = s.get("/v1/catalogs/c/manifest", who="device").json()["payload"]
    assert manifest["version"] == 1 and manifest["pack"]["sha256"] == v1["pack"]["sha256"]
    assert hashlib.sha256(s.get(v1["pack"]["url"], who="device").content).hexdigest() == v1["pack"]["sha256"]
    with s.state.sessions() as session:
        assert session.scalars(select(CatalogVersion.version)).all() == [1]
    v2 = s.post("/v1/catalogs/c/publish").json()
    assert v2["version"] == 2 and v2["coin_count"] == 3


def test_concurrent_publishes_and_downloads_never_tear(sqlite_server: Server) -> None:
    s = sqlite_server
    coins = sample_coins("coins211", n_coins=6, per_coin=1)
    populate(s, "c", coins[:2])
    s.post("/v1/catalogs/c/publish")
    stop = threading.Event()
    problems: list[str] = []
    checked = [0]

    def device() -> None:
        while not stop.is_set():
            payload = s.get("/v1/catalogs/c/manifest", who="device").json()["payload"]
            data = s.get(payload["pack"]["url"], who="device").content
            if hashlib.sha256(data).hexdigest() != payload["pack"]["sha256"]:
                problems.append(f"torn pack for v{payload['version']}")
            packlib.read_pack(data)
            checked[0] += 1

    threads = [threading.Thread(target=device) for _ in range(3)]
    for t in threads:
        t.start()
    results = []
    publishers = []
    for i in range(2, 6):
        populate(s, "c", coins[i : i + 1])
        publishers = [threading.Thread(target=lambda: results.append(s.post("/v1/catalogs/c/publish")))
                      for _ in range(2)]
        for t in publishers:
            t.start()
        for t in publishers:
            t.join()
    stop.set()
    for t in threads:
        t.join()
    assert not problems and checked[0] > 0
    codes = sorted(r.status_code for r in results)
    assert set(codes) <= {201, 409}
    versions = [r.json()["version"] for r in results if r.status_code == 201]
    assert len(versions) == len(set(versions))  # no version number handed out twice
    listed = [v["version"] for v in s.get("/v1/catalogs/c/versions").json()["versions"]]
    assert listed == list(range(1, len(listed) + 1))


# Quantisation error allowed per vector component (unit vectors): int8 ~ max|v|/127, fp16 ~ 2^-11 relative.
_QUANT_ATOL = {"fp32": 1e-7, "fp16": 1e-3, "int8": 0.02}


@pytest.mark.parametrize("quant", ["fp32", "fp16", "int8"])
def test_published_pack_holds_the_stored_reference_vectors(make_server: ServerFactory, quant: str) -> None:
    s = make_server(pack_quant=quant)
    coins = sample_coins("euro_phone", n_coins=3, per_coin=2)
    populate(s, "c", coins)
    v = s.post("/v1/catalogs/c/publish").json()
    pack = packlib.read_pack(s.get(v["pack"]["url"], who="device").content)
    assert (pack.quant, pack.dim, pack.model_fingerprint) == (quant, 64, s.state.embedder().fingerprint)
    with s.state.sessions() as session:
        stored = session.execute(
            select(Coin.coin_id, ReferenceImage.embedding).join(Coin, Coin.id == ReferenceImage.coin_pk)
        ).all()
    got = pack.vectors_f32()
    for coin_id, _, _ in coins:
        want = np.stack([np.frombuffer(e, "<f4") for c, e in stored if c == coin_id])
        mine = got[[i for i, c in enumerate(pack.coin_ids) if c == coin_id]]
        assert len(mine) == len(want) == 2
        # same vectors, whatever order the pack keeps a coin's references in
        err = np.abs(mine[:, None, :] - want[None, :, :]).max(axis=2)
        assert err.min(axis=1).max() < _QUANT_ATOL[quant], (coin_id, err)
    if quant == "fp32":
        # The tiny random-weight test embedder puts every photo within ~1e-5 cosine of every other, so only the
        # exact (fp32) pack can be expected to rank each reference photo's own coin first.
        for i, coin_id in enumerate(pack.coin_ids):
            assert pack.search(got[i], 1)[0][0] == coin_id
