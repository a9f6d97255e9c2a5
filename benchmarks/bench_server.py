"""Sync server: Faiss index build, pack build, publish, and manifest / pack request throughput on loopback.

    python -m benchmarks.bench_server --quick      # 10k embeddings; 3 s of load per endpoint and server
    python -m benchmarks.bench_server              # 10k and 100k embeddings; 10 s of load

Build timings use seeded random unit 64-d embeddings (two references per coin): ``CatalogIndex`` (the server's
exact Faiss index, CPU), an incremental add of 100 references to it, the near-duplicate scan run at publish,
``build_pack`` (int8, what the server publishes) and ``build_delta`` to a version with 1% of the coins changed.
Each is checked before it is timed: index search against a numpy brute force, the pack round trip and its
search against the index, the delta applied against the new pack's bytes.

Throughput: a catalog of 10k references (``load_vectors``) is written to a fresh SQLite database (or ``--db``),
published over HTTP, then served by ``coinvision serve`` (werkzeug, threaded) and by gunicorn (the documented
production command), each in its own process. A bounded Python load generator (``--clients`` threads, keep-alive
connections, ``--seconds`` per endpoint) requests the signed manifest, the full pack, and the pack with
``If-None-Match`` (304), and a server-side search by embedding. Before timing, one manifest's signature, the
pack's sha256, the 304 and a search are verified; during timing every response's status and length are checked.
Client and server share the machine's cores.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import seed_everything, write_result

__all__ = ["ServerBenchConfig", "main"]

log = logging.getLogger(__name__)

FINGERPRINT = "bench-model-0001"


@dataclass(frozen=True)
class ServerBenchConfig:
    sizes: tuple[int, ...] = (10_000, 100_000)
    dim: int = 64
    refs_per_coin: int = 2
    load_vectors: int = 10_000
    clients: int = 8
    seconds: float = 10.0
    servers: tuple[str, ...] = ("werkzeug", "gunicorn")
    gunicorn_workers: int = 2
    gunicorn_threads: int = 4
    threads: int = 1  # numpy BLAS / faiss threads for the build timings
    repeats: int = 3
    seed: int = 0


def unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


# ------------------------------------------------------------------------------------------ build timings
def bench_builds(n: int, cfg: ServerBenchConfig) -> list[dict[str, Any]]:
    from coinvision.sdk.pack import CoinRecord, Pack, apply_delta, build_delta, build_pack, read_pack
    from coinvision.sync_server.index import CatalogIndex

    rng = np.random.default_rng([cfg.seed, n])
    vectors = unit_vectors(n, cfg.dim, rng)
    coin_ids = [f"coin{i // cfg.refs_per_coin:07d}" for i in range(n)]
    ids = np.arange(1, n + 1, dtype=np.int64)
    records = [CoinRecord(coin_id=c, label=f"label {c}", country="XX") for c in dict.fromkeys(coin_ids)]
    queries = unit_vectors(50, cfg.dim, rng)

    # correctness first: the index equals brute force (coin = max over its references)
    index = CatalogIndex(cfg.dim, ids, vectors, coin_ids, use_gpu=False)
    scores = queries @ vectors.T
    for q, row in zip(queries, scores, strict=True):
        best: dict[str, float] = {}
        for c, s in zip(coin_ids, row, strict=True):
            best[c] = max(best.get(c, -2.0), float(s))
        want = [c for c, _ in sorted(best.items(), key=lambda kv: -kv[1])[:10]]
        got = [c for c, _, _ in index.search(q, 10)[0]]
        if got != want:
            raise RuntimeError(f"index search differs from brute force at n={n}; nothing was timed")
    index_s, _ = _best_of(lambda: CatalogIndex(cfg.dim, ids, vectors, coin_ids, use_gpu=False), cfg.repeats)
    extra = unit_vectors(100, cfg.dim, rng)
    extra_ids = np.arange(n + 1, n + 101, dtype=np.int64)
    add_s, _ = _best_of(lambda: index.with_added(extra_ids, extra, ["new"] * 100, generation=1), cfg.repeats)
    dup_s, pairs = _best_of(lambda: index.near_duplicates(0.97), 1)

    def pack() -> bytes:
        return build_pack(vectors, coin_ids, records, catalog_id="bench", catalog_version=1,
                          model_fingerprint=FINGERPRINT, quant="int8", created_at=0)

    raw = pack()
    parsed = read_pack(raw)
    if parsed.to_bytes() != raw or parsed.vector_count != n:
        raise RuntimeError("pack round trip failed; nothing was timed")
    agree = np.mean([parsed.search(q, 1)[0][0] == index.search(q, 1)[0][0][0] for q in queries])
    pack_s, _ = _best_of(pack, cfg.repeats)
    read_s, _ = _best_of(lambda: read_pack(raw), cfg.repeats)

    # v2: 1% of the coins get a new reference vector
    changed = set(rng.choice(len(records), max(1, len(records) // 100), replace=False).tolist())
    v2 = vectors.copy()
    for i in range(n):
        if i // cfg.refs_per_coin in changed:
            v2[i] = unit_vectors(1, cfg.dim, rng)[0]
    new = Pack.from_vectors(v2, coin_ids, records, catalog_id="bench", catalog_version=2,
                            model_fingerprint=FINGERPRINT, quant="int8", created_at=1)
    delta = build_delta(parsed, new)
    if apply_delta(parsed, delta).to_bytes() != new.to_bytes():
        raise RuntimeError("delta does not rebuild the new pack; nothing was timed")
    delta_s, _ = _best_of(lambda: build_delta(parsed, new), cfg.repeats)
    apply_s, _ = _best_of(lambda: apply_delta(parsed, delta), cfg.repeats)
    return [
        {"measure": "index build (CatalogIndex, exact IP, CPU)", "n": n, "value": index_s, "unit": "s"},
        {"measure": "index incremental add of 100 refs", "n": n, "value": add_s, "unit": "s"},
        {"measure": "near-duplicate scan (publish)", "n": n, "value": dup_s, "unit": "s",
         "note": f"{len(pairs)} pairs >= 0.97"},
        {"measure": "pack build (int8)", "n": n, "value": pack_s, "unit": "s",
         "note": f"{len(raw)} bytes; pack top-1 = index top-1 on {agree:.0%} of 50 queries"},
        {"measure": "pack read", "n": n, "value": read_s, "unit": "s"},
        {"measure": "delta build (1% coins changed)", "n": n, "value": delta_s, "unit": "s",
         "note": f"{len(delta)} bytes"},
        {"measure": "delta apply", "n": n, "value": apply_s, "unit": "s"},
    ]


# ------------------------------------------------------------------------------------------ server setup
@dataclass(frozen=True)
class _Catalog:
    data_dir: Path
    db_url: str
    device_token: str
    public_key: str
    manifest_path: str
    pack_path: str
    pack_sha: str
    pack_size: int
    publish_s: float
    search_path: str
    search_body: bytes
    search_coin: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare_catalog(cfg: ServerBenchConfig, root: Path, db_url: str | None) -> _Catalog:
    """Write a catalog of ``load_vectors`` references straight into the database, then publish it over HTTP."""
    from coinvision.sync_server.auth import create_token
    from coinvision.sync_server.config import ServerConfig
    from coinvision.sync_server.live import start_local_server
    from coinvision.sync_server.models import Catalog, Coin, ReferenceImage
    from coinvision.sync_server.signing import load_or_create_key, public_key_b64
    from sqlalchemy import insert, select

    data = root / "data"
    cfg_server = ServerConfig.resolve(data_dir=data, db_url=db_url or f"sqlite:///{data / 'bench.db'}")
    rng = np.random.default_rng([cfg.seed, 7])
    vectors = unit_vectors(cfg.load_vectors, cfg.dim, rng)
    local = start_local_server(cfg_server)  # migrates; no models: the fingerprint comes from the references
    try:
        with local.state.sessions() as s:
            s.add(Catalog(id="bench", name="bench", generation=1))
            s.flush()
            n_coins = cfg.load_vectors // cfg.refs_per_coin
            s.execute(insert(Coin), [{"catalog_id": "bench", "coin_id": f"coin{i:07d}", "label": f"coin {i}",
                                      "extra": {}} for i in range(n_coins)])
            pks = dict(s.execute(select(Coin.coin_id, Coin.id).where(Coin.catalog_id == "bench")).all())
            s.execute(insert(ReferenceImage), [{
                "coin_pk": pks[f"coin{i // cfg.refs_per_coin:07d}"], "catalog_id": "bench", "sha256": "0" * 64,
                "filename": "bench.jpg", "width_px": 1, "height_px": 1, "embedding": v.astype("<f4").tobytes(),
                "embedding_dim": cfg.dim, "model_fingerprint": FINGERPRINT, "thumbnail_jpeg": b"",
            } for i, v in enumerate(vectors)])
            s.commit()
            device = create_token(s, "device", "bench")
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", local.server.port, timeout=600)
        maintainer = {"Authorization": f"Bearer {local.maintainer_token}"}
        conn.request("POST", "/v1/catalogs/bench/publish", headers=maintainer)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        publish_s = time.perf_counter() - t0
        if resp.status != 201:
            raise RuntimeError(f"publish failed: {resp.status} {body}")
    finally:
        local.stop()
    probe = min(123, cfg.load_vectors - 1)  # a catalog vector: the search must find its own coin first
    return _Catalog(data, cfg_server.db_url, device, public_key_b64(load_or_create_key(cfg_server.key_path)),
                    "/v1/catalogs/bench/manifest", body["pack"]["url"], body["pack"]["sha256"],
                    int(body["pack"]["size"]), publish_s, "/v1/catalogs/bench/search?top_k=5",
                    json.dumps({"embedding": vectors[probe].tolist()}).encode(),
                    f"coin{probe // cfg.refs_per_coin:07d}")


def _start(kind: str, cat: _Catalog, cfg: ServerBenchConfig) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    env = {**os.environ, "COINVISION_DATA_DIR": str(cat.data_dir), "COINVISION_DB_URL": cat.db_url,
           "OMP_NUM_THREADS": "1"}
    bin_dir = Path(sys.executable).parent
    if kind == "werkzeug":
        cmd = [sys.executable, "-m", "coinvision.cli.main", "serve", "--port", str(port), "--db", cat.db_url,
               "--data-dir", str(cat.data_dir)]
    else:
        cmd = [str(bin_dir / "gunicorn"), "--workers", str(cfg.gunicorn_workers), "--worker-class", "gthread",
               "--threads", str(cfg.gunicorn_threads), "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
               "coinvision.sync_server.app:create_app()"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/v1/health")
            if conn.getresponse().status == 200:
                conn.close()
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{kind} server did not start")
        time.sleep(0.3)
    if kind == "gunicorn":
        time.sleep(2.0)  # every worker booted, not only the first one to answer
    return proc, port


def _get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str],
         body: bytes | None = None) -> tuple[int, bytes]:
    conn.request("GET" if body is None else "POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def _verify(port: int, cat: _Catalog) -> None:
    """Correctness before timing: signed manifest, pack bytes, conditional request."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    auth = {"Authorization": f"Bearer {cat.device_token}"}
    status, body = _get(conn, cat.manifest_path, auth)
    doc = json.loads(body)
    payload = doc["payload"]
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    Ed25519PublicKey.from_public_bytes(base64.b64decode(cat.public_key)).verify(
        base64.b64decode(doc["signature"]), canonical)
    if status != 200 or payload["pack"]["sha256"] != cat.pack_sha:
        raise RuntimeError("manifest does not name the published pack")
    status, body = _get(conn, cat.pack_path, auth)
    if status != 200 or hashlib.sha256(body).hexdigest() != cat.pack_sha:
        raise RuntimeError("pack bytes do not match the manifest's sha256")
    status, body = _get(conn, cat.pack_path, {**auth, "If-None-Match": f'"{cat.pack_sha}"'})
    if status != 304 or body:
        raise RuntimeError(f"If-None-Match gave {status}, not 304")
    status, body = _get(conn, cat.search_path, {**auth, "Content-Type": "application/json"}, cat.search_body)
    top = json.loads(body)["matches"][0] if status == 200 else {}
    if top.get("coin_id") != cat.search_coin or top.get("score", 0) < 0.9999:
        raise RuntimeError(f"search for a catalog vector did not find its coin first: {status} {body[:200]!r}")
    conn.close()


def _load(port: int, path: str, headers: dict[str, str], expect: tuple[int, int | None],
          cfg: ServerBenchConfig, body: bytes | None = None) -> dict[str, Any]:
    """``cfg.clients`` threads, each on one keep-alive connection, requesting ``path`` for ``cfg.seconds``."""
    status_ok, length = expect
    latencies: list[list[float]] = [[] for _ in range(cfg.clients)]
    errors = [0] * cfg.clients
    received = [0] * cfg.clients
    start = threading.Barrier(cfg.clients + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        start.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                status, got = _get(conn, path, headers, body)
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            latencies[i].append(time.perf_counter() - t0)
            received[i] += len(got)
            if status != status_ok or (length is not None and len(got) != length):
                errors[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(cfg.clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + cfg.seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    lat = np.array([x for per in latencies for x in per]) * 1e3
    return {"requests": len(lat), "errors": sum(errors), "seconds": elapsed, "req_per_s": len(lat) / elapsed,
            "mb_per_s": sum(received) / elapsed / 1e6, "latency_ms_p50": float(np.median(lat)) if len(lat) else None,
            "latency_ms_p99": float(np.percentile(lat, 99)) if len(lat) else None}


def bench_throughput(cfg: ServerBenchConfig, db_url: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_server_") as tmp:
        cat = _prepare_catalog(cfg, Path(tmp), db_url)
        info = {"publish_s": cat.publish_s, "pack_bytes": cat.pack_size, "load_vectors": cfg.load_vectors,
                "db": cat.db_url.split(":", 1)[0]}
        print(f"  published {cfg.load_vectors} refs over HTTP in {cat.publish_s:.2f} s ({cat.pack_size} B pack)",
              flush=True)
        auth = {"Authorization": f"Bearer {cat.device_token}"}
        endpoints = [
            ("manifest (signed)", cat.manifest_path, auth, (200, None), None),
            ("pack download (full)", cat.pack_path, auth, (200, cat.pack_size), None),
            ("pack If-None-Match (304)", cat.pack_path, {**auth, "If-None-Match": f'"{cat.pack_sha}"'}, (304, 0),
             None),
            ("search by embedding (top 5)", cat.search_path, {**auth, "Content-Type": "application/json"},
             (200, None), cat.search_body),
        ]
        for kind in cfg.servers:
            proc, port = _start(kind, cat, cfg)
            try:
                _verify(port, cat)
                for name, path, headers, expect, body in endpoints:
                    r = _load(port, path, headers, expect, cfg, body)
                    if r["errors"]:
                        raise RuntimeError(f"{kind} {name}: {r['errors']} bad responses under load")
                    label = kind if kind == "werkzeug" else (
                        f"gunicorn {cfg.gunicorn_workers}w x {cfg.gunicorn_threads}t gthread")
                    rows.append({"server": label, "endpoint": name, "clients": cfg.clients, **r})
                    print(f"  {label:<28} {name:<26} {r['req_per_s']:8.1f} req/s  p50 {r['latency_ms_p50']:.2f} ms"
                          f"  p99 {r['latency_ms_p99']:.2f} ms  {r['mb_per_s']:.1f} MB/s", flush=True)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return rows, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k embeddings, 3 s of load per endpoint")
    parser.add_argument("--sizes", type=lambda v: tuple(int(x) for x in v.split(",")),
                        help="comma-separated embedding counts for the build timings (overrides --quick's)")
    parser.add_argument("--load-vectors", type=int, default=10_000, help="references in the served catalog")
    parser.add_argument("--clients", type=int, default=8, help="concurrent keep-alive clients")
    parser.add_argument("--seconds", type=float, help="load duration per endpoint and server")
    parser.add_argument("--servers", default="werkzeug,gunicorn", help="comma list of werkzeug, gunicorn")
    parser.add_argument("--db", help="SQLAlchemy URL for the load test (default: SQLite in a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/server.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    cfg = ServerBenchConfig(clients=args.clients, servers=tuple(args.servers.split(",")), seed=args.seed,
                            load_vectors=args.load_vectors)
    if args.quick:
        cfg = ServerBenchConfig(**{**asdict(cfg), "sizes": (10_000,), "seconds": 3.0})
    if args.seconds:
        cfg = ServerBenchConfig(**{**asdict(cfg), "seconds": args.seconds})
    if args.sizes:
        cfg = ServerBenchConfig(**{**asdict(cfg), "sizes": args.sizes})
    seed_everything(cfg.seed)

    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(cfg.threads)
    print(f"server benchmark: sizes {cfg.sizes}, dim {cfg.dim}, {cfg.clients} clients x {cfg.seconds:g} s",
          flush=True)
    build_rows: list[dict[str, Any]] = []
    with threadpool_limits(cfg.threads):
        for n in cfg.sizes:
            rows = bench_builds(n, cfg)
            for r in rows:
                print(f"  {r['n']:>8,d} {r['measure']:<44} {r['value']:.4f} s  {r.get('note', '')}", flush=True)
            build_rows += rows
    load_rows, load_info = bench_throughput(cfg, args.db)
    table = [{"what": f"{r['measure']}", "n": r["n"], "seconds": r["value"]} for r in build_rows]
    table.append({"what": "publish over HTTP (near-dup scan + pack + commit)", "n": load_info["load_vectors"],
                  "seconds": load_info["publish_s"]})
    table += [{"what": f"{r['server']}: {r['endpoint']}", "n": load_info["load_vectors"], "req/s": r["req_per_s"],
               "p50 ms": r["latency_ms_p50"], "p99 ms": r["latency_ms_p99"], "MB/s": r["mb_per_s"]}
              for r in load_rows]
    results = {"config": asdict(cfg), "builds": build_rows, "load": load_rows, "load_catalog": load_info,
               "note": "client and server share the machine's CPU cores (loopback)"}
    path = write_result("server", results, table, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
