"""Catalog search: the pack's numpy search (int8 / fp16 / fp32 packs) against faiss ``IndexFlatIP`` and usearch
(exact and HNSW), on random-but-clustered 64-d unit vectors (one vector per coin).

    python -m benchmarks.bench_search --quick      # 10k and 100k vectors
    python -m benchmarks.bench_search              # 10k, 100k and 1M vectors

Per catalog size and method: queries/s for a batch of queries and for one query at a time, top-10 and top-1
agreement with exact fp32 search (faiss ``IndexFlatIP`` is the ground truth, itself checked against a float64
brute force first), bytes per vector (pack file or index size / N) and build time. Every method's first run is
its correctness run: exact methods must reproduce the ground truth before anything is timed. Threads are pinned
(``--threads``, default 1) for numpy's BLAS, faiss and usearch alike.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from benchmarks.common import seed_everything, write_result

__all__ = ["SearchConfig", "clustered_unit_vectors", "main", "run_size", "topk_agreement"]

log = logging.getLogger(__name__)

K = 10
# Exact methods must agree with the ground truth on at least this share of top-10 slots; the rest is allowed
# for float32 rounding swapping near-tied neighbours.
EXACT_MIN_AGREEMENT = 0.995
PACK_QUANTS = ("int8", "fp16", "fp32")


@dataclass(frozen=True)
class SearchConfig:
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    dim: int = 64
    batch_queries: int = 1000  # queries per batch-search call (capped at large_n_batch_queries from 1M on)
    large_n_batch_queries: int = 256
    single_queries: int = 100  # timed one-query calls (a tenth of that from 1M on)
    cluster_size: int = 100  # mean vectors per cluster: a coin's photos / look-alike coins
    cluster_spread: float = 0.05  # per-dimension noise around a unit cluster centre
    query_noise: float = 0.03  # a query is a perturbed catalog vector (a new photo of a catalogued coin)
    threads: int = 1
    min_time_s: float = 1.0  # each timing repeats until this much time has passed (at most max_repeats)
    max_repeats: int = 5
    hnsw_connectivity: int = 16
    hnsw_expansion_add: int = 64
    hnsw_expansion_search: int = 64
    seed: int = 0


def clustered_unit_vectors(n: int, dim: int, cluster_size: int, spread: float,
                           rng: np.random.Generator) -> np.ndarray:
    """``(n, dim)`` float32 unit vectors drawn around ``n // cluster_size`` random unit centres."""
    n_clusters = max(1, n // cluster_size)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 1 << 17):  # bounded temporaries at 1M
        stop = min(n, start + (1 << 17))
        block = centres[rng.integers(0, n_clusters, stop - start)]
        block += spread * rng.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def make_queries(database: np.ndarray, count: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    q = database[rng.integers(0, len(database), count)] + noise * rng.standard_normal(
        (count, database.shape[1]), dtype=np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def topk_agreement(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row's ground-truth top-k ids that ``found`` also returns (order ignored)."""
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def _time_repeated(fn: Callable[[], object], cfg: SearchConfig) -> list[float]:
    """Seconds per call, repeated until ``min_time_s`` has passed (1 .. max_repeats calls)."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < cfg.max_repeats and (not times or time.perf_counter() - started < cfg.min_time_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _single_query_times(search_one: Callable[[np.ndarray], object], queries: np.ndarray) -> np.ndarray:
    for q in queries[:3]:  # warm-up
        search_one(q)
    times = np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        search_one(q)
        times[i] = time.perf_counter() - t0
    return times


@dataclass
class _Method:
    name: str
    exact: bool
    build_s: float
    bytes_per_vector: float
    batch: Callable[[np.ndarray], np.ndarray]  # (Q, dim) -> (Q, K) int64 vector ids
    single: Callable[[np.ndarray], object]
    notes: str = ""


def _pack_method(database: np.ndarray, quant: str) -> _Method:
    from coinvision.sdk.pack import Pack

    n = len(database)
    ids = [f"c{i:08d}" for i in range(n)]  # zero-padded: pack (sorted id) order == vector order
    started = time.perf_counter()
    pack = Pack.from_vectors(database, ids, [], catalog_id="bench", catalog_version=1, model_fingerprint="bench",
                             quant=quant, created_at=0)
    build_s = time.perf_counter() - started

    def batch(queries: np.ndarray) -> np.ndarray:
        hits = pack.search_batch(queries, k=K)
        return np.array([[int(cid[1:]) for cid, _ in row] for row in hits], dtype=np.int64)

    return _Method(f"pack {quant} (numpy)", quant == "fp32", build_s, len(pack.to_bytes()) / n, batch,
                   lambda q: pack.search(q, k=K),
                   notes="build = Pack.from_vectors (what the server publishes); bytes = pack file")


def _faiss_method(database: np.ndarray) -> _Method:
    import faiss

    started = time.perf_counter()
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    build_s = time.perf_counter() - started
    size = faiss.serialize_index(index).nbytes
    return _Method("faiss IndexFlatIP fp32", True, build_s, size / len(database),
                   lambda q: index.search(q, K)[1].astype(np.int64), lambda q: index.search(q[None], K),
                   notes="bytes = serialized index")


def _usearch_exact_method(database: np.ndarray, threads: int) -> _Method:
    from usearch.index import MetricKind, search

    def batch(queries: np.ndarray) -> np.ndarray:
        return search(database, queries, K, MetricKind.IP, exact=True, threads=threads).keys.astype(np.int64)

    return _Method("usearch exact fp32", True, 0.0, database.nbytes / len(database), batch,
                   lambda q: search(database, q, K, MetricKind.IP, exact=True, threads=threads),
                   notes="brute force over the float32 array; bytes = the array")


def _usearch_hnsw_method(database: np.ndarray, cfg: SearchConfig) -> _Method:
    from usearch.index import Index

    started = time.perf_counter()
    index = Index(ndim=database.shape[1], metric="ip", dtype="f32", connectivity=cfg.hnsw_connectivity,
                  expansion_add=cfg.hnsw_expansion_add, expansion_search=cfg.hnsw_expansion_search)
    index.add(np.arange(len(database), dtype=np.uint64), database, threads=cfg.threads)
    build_s = time.perf_counter() - started
    name = (f"usearch HNSW fp32 (M={cfg.hnsw_connectivity}, ef_add={cfg.hnsw_expansion_add}, "
            f"ef={cfg.hnsw_expansion_search})")
    return _Method(name, False, build_s, index.memory_usage / len(database),
                   lambda q: index.search(q, K, threads=cfg.threads).keys.astype(np.int64),
                   lambda q: index.search(q, K, threads=cfg.threads), notes="bytes = index.memory_usage")


def _ground_truth(database: np.ndarray, queries: np.ndarray) -> tuple[_Method, np.ndarray]:
    """faiss flat search, first checked against a float64 brute force on a subset of the queries."""
    flat = _faiss_method(database)
    truth = flat.batch(queries)
    sub = queries[:50].astype(np.float64)
    scores = sub @ database.T.astype(np.float64)
    exact64 = np.argsort(-scores, axis=1)[:, :K]
    agreement = topk_agreement(truth[:50], exact64)
    if agreement < EXACT_MIN_AGREEMENT:
        raise RuntimeError(f"faiss IndexFlatIP agrees with float64 brute force on only {agreement:.4f} of top-{K}; "
                           "the ground truth is wrong, nothing was timed")
    return flat, truth


def _evaluate(method: _Method, queries: np.ndarray, truth: np.ndarray, cfg: SearchConfig,
              single_count: int) -> dict[str, Any]:
    found = method.batch(queries)  # the correctness run, untimed
    agreement = topk_agreement(found, truth)
    top1 = float(np.mean(found[:, 0] == truth[:, 0]))
    if method.exact and agreement < EXACT_MIN_AGREEMENT:
        raise RuntimeError(f"{method.name}: top-{K} agreement with exact search is {agreement:.4f} < "
                           f"{EXACT_MIN_AGREEMENT}; an exact search is wrong, nothing was timed")
    batch_s = _time_repeated(lambda: method.batch(queries), cfg)
    single_s = _single_query_times(method.single, queries[:single_count])
    return {
        "method": method.name,
        "exact": method.exact,
        "top10_agreement": agreement,
        "top1_agreement": top1,
        "batch_queries": len(queries),
        "batch_queries_per_s": len(queries) / float(np.median(batch_s)),
        "batch_repeats": len(batch_s),
        "single_queries": len(single_s),
        "single_queries_per_s": len(single_s) / float(single_s.sum()),
        "single_ms_median": float(np.median(single_s) * 1e3),
        "single_ms_p90": float(np.percentile(single_s, 90) * 1e3),
        "bytes_per_vector": method.bytes_per_vector,
        "build_s": method.build_s,
        "notes": method.notes,
    }


def run_size(n: int, cfg: SearchConfig, *, methods: tuple[str, ...] | None = None,
             progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """All methods on one catalog of ``n`` vectors. ``methods`` filters by name prefix (``"pack"``,
    ``"faiss"``, ``"usearch exact"``, ``"usearch HNSW"``)."""
    rng = np.random.default_rng([cfg.seed, n])
    database = clustered_unit_vectors(n, cfg.dim, cfg.cluster_size, cfg.cluster_spread, rng)
    n_batch = cfg.batch_queries if n < 1_000_000 else min(cfg.batch_queries, cfg.large_n_batch_queries)
    n_single = cfg.single_queries if n < 1_000_000 else max(1, cfg.single_queries // 10)
    queries = make_queries(database, n_batch, cfg.query_noise, rng)
    flat, truth = _ground_truth(database, queries)

    def wanted(prefix: str) -> bool:
        return methods is None or any(prefix.startswith(m) for m in methods)

    builders: list[tuple[str, Callable[[], _Method]]] = [
        *((f"pack {q}", lambda q=q: _pack_method(database, q)) for q in PACK_QUANTS),
        ("faiss", lambda: flat),
        ("usearch exact", lambda: _usearch_exact_method(database, cfg.threads)),
        ("usearch HNSW", lambda: _usearch_hnsw_method(database, cfg)),
    ]
    rows = []
    for prefix, build in builders:
        if not wanted(prefix):
            continue
        method = build()
        row = {"n_vectors": n, **_evaluate(method, queries, truth, cfg, n_single)}
        progress(f"  {n:>9,d} {row['method']:<48} batch {row['batch_queries_per_s']:>10.1f} q/s  single "
                 f"{row['single_queries_per_s']:>9.1f} q/s  top10 {row['top10_agreement']:.4f}  "
                 f"{row['bytes_per_vector']:.1f} B/vec  build {row['build_s']:.1f} s")
        rows.append(row)
        del method
        gc.collect()
    return rows


def _limit_threads(threads: int) -> dict[str, Any]:
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(threads)
    return {"blas": threadpool_limits(threads)}  # keep a reference: the limit lasts while it lives


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k and 100k vectors, fewer queries")
    parser.add_argument("--sizes", type=lambda s: tuple(int(v) for v in s.split(",")),
                        help="comma-separated catalog sizes (overrides --quick's)")
    parser.add_argument("--threads", type=int, default=1, help="threads for numpy BLAS, faiss and usearch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/search.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = SearchConfig(threads=args.threads, seed=args.seed)
    if args.quick:
        cfg = SearchConfig(sizes=(10_000, 100_000), batch_queries=256, single_queries=50, threads=args.threads,
                           seed=args.seed)
    if args.sizes:
        cfg = SearchConfig(**{**asdict(cfg), "sizes": args.sizes})
    seed_everything(cfg.seed)
    limits = _limit_threads(cfg.threads)
    print(f"search benchmark: sizes {cfg.sizes}, dim {cfg.dim}, k {K}, {cfg.threads} thread(s)", flush=True)
    rows: list[dict[str, Any]] = []
    for n in cfg.sizes:
        rows += run_size(n, cfg, progress=lambda line: print(line, flush=True))
    del limits
    table = [{
        "vectors": r["n_vectors"], "method": r["method"], "batch q/s": r["batch_queries_per_s"],
        "single q/s": r["single_queries_per_s"], "top-10 agreement": r["top10_agreement"],
        "bytes/vector": r["bytes_per_vector"], "build s": r["build_s"],
    } for r in rows]
    results = {"config": asdict(cfg), "k": K, "ground_truth": "faiss IndexFlatIP fp32 (checked against float64)",
               "rows": rows}
    path = write_result("search", results, table, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
