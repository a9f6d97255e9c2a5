"""File storage: publish and pack-download latency with packs on the local disk vs in an S3 bucket (loopback).

    source .ci/services.sh                         # starts the S3 server (moto) and exports COINVISION_TEST_S3_URL
    python -m benchmarks.bench_storage [--quick] [--endpoint URL]

For each catalog size a catalog of seeded random 64-d unit references is written straight into a fresh SQLite
database (as in ``bench_server``), then a loopback server (no models: a read-only replica's configuration) on each
backend is timed over HTTP:

- ``publish v1``: near-duplicate scan, pack build, pack written to the store, signed row committed;
- ``publish v2`` after 1% of the coins changed: the same plus the delta, built from v1's pack read back from the
  store (on S3: downloaded and verified, as a replica that did not publish v1 would);
- ``pack GET cold``: the first download of v2's pack (local: hashed once; S3: downloaded from the bucket into the
  replica's cache, hashed on the way, then sent);
- ``pack GET warm``: median of ``--repeats`` further downloads (served from the verified file).

Each size runs ``--rounds`` times, alternating the backends (the machine is shared: alternation spreads other load
over both); the table gives medians. Then the store alone (``FileStore``, no HTTP): ``put_pack_file`` and the
first verified ``pack_file`` read (S3: download + sha256 into the cache; local: sha256 of the file) of random blobs
of 1, 8 and 32 MB, median of ``--repeats``.

Every download's sha256 is checked against the manifest. The S3 server is moto (Python) on the same 2 cores, so
its figures are an upper bound for the server's own overhead, not a prediction of a real S3 service's latency.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_server import FINGERPRINT, unit_vectors
from benchmarks.common import write_result

__all__ = ["main"]


def _request(port: int, method: str, path: str, token: str) -> tuple[int, bytes, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request(method, path, headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    body = resp.read()
    elapsed = time.perf_counter() - t0
    conn.close()
    return resp.status, body, elapsed


def _fill(local: Any, n: int, rng: np.random.Generator, dim: int = 64) -> None:
    from coinvision.sync_server.models import Catalog, Coin, ReferenceImage
    from sqlalchemy import insert, select

    vectors = unit_vectors(n, dim, rng)
    with local.state.sessions() as s:
        s.add(Catalog(id="bench", name="bench", generation=1))
        s.flush()
        s.execute(insert(Coin), [{"catalog_id": "bench", "coin_id": f"coin{i:07d}", "label": f"coin {i}",
                                  "extra": {}} for i in range(n // 2)])
        pks = dict(s.execute(select(Coin.coin_id, Coin.id).where(Coin.catalog_id == "bench")).all())
        s.execute(insert(ReferenceImage), [{
            "coin_pk": pks[f"coin{i // 2:07d}"], "catalog_id": "bench", "sha256": "0" * 64, "filename": "b.jpg",
            "width_px": 1, "height_px": 1, "embedding": v.astype("<f4").tobytes(), "embedding_dim": dim,
            "model_fingerprint": FINGERPRINT, "thumbnail_jpeg": b"",
        } for i, v in enumerate(vectors)])
        s.commit()


def _change_one_percent(local: Any, n: int) -> None:
    from coinvision.sync_server.models import Catalog, Coin
    from sqlalchemy import update

    with local.state.sessions() as s:
        s.execute(update(Coin).where(Coin.catalog_id == "bench", Coin.coin_id.in_(
            [f"coin{i:07d}" for i in range(0, n // 2, 100)])).values(label="changed"))
        s.execute(update(Catalog).where(Catalog.id == "bench").values(generation=Catalog.generation + 1))
        s.commit()


def bench_backend(backend: str, n: int, root: Path, endpoint: str | None, repeats: int) -> dict[str, Any]:
    from coinvision.sync_server.config import ServerConfig
    from coinvision.sync_server.live import start_local_server

    storage = None
    if backend == "s3":
        import boto3

        bucket = "bench-" + uuid.uuid4().hex[:12]
        boto3.session.Session().client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        storage = f"s3://{bucket}/bench"
    data = root / f"{backend}-{n}"
    cfg = ServerConfig.resolve(data_dir=data, db_url=f"sqlite:///{data / 'bench.db'}", storage=storage)
    local = start_local_server(cfg)
    try:
        _fill(local, n, np.random.default_rng([n, 11]))
        token, port = local.maintainer_token, local.server.port
        status, body, publish_v1 = _request(port, "POST", "/v1/catalogs/bench/publish", token)
        if status != 201:
            raise RuntimeError(f"{backend}: publish v1 answered {status}: {body[:300]!r}")
        _change_one_percent(local, n)
        status, body, publish_v2 = _request(port, "POST", "/v1/catalogs/bench/publish", token)
        v2 = json.loads(body)
        if status != 201 or v2["delta"] is None:
            raise RuntimeError(f"{backend}: publish v2 answered {status} (delta {v2.get('delta')})")
        sha, size = v2["pack"]["sha256"], v2["pack"]["size"]
        times = []
        for _ in range(repeats + 1):
            status, pack, elapsed = _request(port, "GET", v2["pack"]["url"], local.device_token)
            if status != 200 or hashlib.sha256(pack).hexdigest() != sha:
                raise RuntimeError(f"{backend}: pack download answered {status} with other bytes")
            times.append(elapsed)
    finally:
        local.stop()
    return {"backend": backend, "references": n, "pack_bytes": size, "delta_bytes": v2["delta"]["size"],
            "publish_v1_s": round(publish_v1, 4), "publish_v2_s": round(publish_v2, 4),
            "pack_get_cold_ms": round(times[0] * 1e3, 2),
            "pack_get_warm_ms": round(statistics.median(times[1:]) * 1e3, 2)}


def bench_store(backend: str, root: Path, endpoint: str | None, repeats: int) -> list[dict[str, Any]]:
    from coinvision.sync_server import storage

    if backend == "s3":
        import boto3

        bucket = "bench-" + uuid.uuid4().hex[:12]
        boto3.session.Session().client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        store: storage.FileStore = storage.S3FileStore.connect(f"s3://{bucket}/b", root / "cache",
                                                               endpoint_url=endpoint)
    else:
        store = storage.LocalFileStore(root / "images", root / "packs")
    rows = []
    rng = np.random.default_rng(5)
    for mb in (1, 8, 32):
        put, read = [], []
        for i in range(repeats):
            data = rng.bytes(mb << 20)
            sha = hashlib.sha256(data).hexdigest()
            t0 = time.perf_counter()
            store.put_pack_file("c", f"{mb}-{i}.pack", data)
            t1 = time.perf_counter()
            store.pack_file("c", f"{mb}-{i}.pack", len(data), sha)  # first read: not cached, not memoised
            put.append(t1 - t0)
            read.append(time.perf_counter() - t1)
        rows.append({"backend": backend, "blob_mb": mb, "put_ms": round(statistics.median(put) * 1e3, 1),
                     "first_verified_read_ms": round(statistics.median(read) * 1e3, 1)})
    store.remove_catalog_files("c")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10k references only")
    p.add_argument("--endpoint", default=os.environ.get("COINVISION_TEST_S3_URL"),
                   help="S3-compatible endpoint (default: $COINVISION_TEST_S3_URL from .ci/services.sh)")
    p.add_argument("--repeats", type=int, default=20, help="warm pack downloads per round")
    p.add_argument("--rounds", type=int, default=3, help="runs per size and backend (medians reported)")
    p.add_argument("--out", default=None, help="result JSON (default: benchmarks/results/storage.json)")
    args = p.parse_args(argv)
    if not args.endpoint:
        print("no S3 endpoint: source .ci/services.sh or give --endpoint URL", file=sys.stderr)
        return 2
    for name, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(name, value)
    os.environ["COINVISION_S3_ENDPOINT_URL"] = args.endpoint
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    sizes = (10_000,) if args.quick else (10_000, 50_000)
    rows: list[dict[str, Any]] = []
    store_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            runs: dict[str, list[dict[str, Any]]] = {"local": [], "s3": []}
            for r in range(args.rounds):
                for backend in ("local", "s3"):
                    runs[backend].append(bench_backend(backend, n, Path(tmp) / f"r{r}", args.endpoint, args.repeats))
            for got in runs.values():
                row = {**got[0], **{k: round(statistics.median(g[k] for g in got), 4) for k in got[0]
                                    if k.endswith(("_s", "_ms"))}, "rounds": args.rounds}
                print(json.dumps(row), flush=True)
                rows.append(row)
        for backend in ("local", "s3"):
            for row in bench_store(backend, Path(tmp) / f"store-{backend}", args.endpoint, 5):
                print(json.dumps(row), flush=True)
                store_rows.append(row)
    write_result("storage", {"sizes": list(sizes), "rounds": args.rounds, "repeats": args.repeats,
                             "s3": "moto server on loopback", "store": store_rows}, rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
