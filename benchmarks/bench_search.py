"""Catalog search: the pack's numpy search (int8 / fp16 / fp32 packs) against faiss ``IndexFlatIP``, faiss IVF and
usearch (exact and HNSW) on random-but-clustered 64-d unit vectors (one vector per coin); then the sync server's
``CatalogIndex`` (exact vs IVF) on real-like catalogs, and its near-duplicate scan.

    python -m benchmarks.bench_search --quick      # 10k and 100k vectors; server index at 100k (~2 min)
    python -m benchmarks.bench_search              # 10k, 100k and 1M vectors; server index at 100k and 1M

Per catalog size and method: queries/s for a batch of queries and for one query at a time, top-10 and top-1
agreement with exact fp32 search (faiss ``IndexFlatIP`` is the ground truth, itself checked against a float64
brute force first), bytes per vector (pack file or index size / N) and build time. Every method's first run is
its correctness run: exact methods must reproduce the ground truth before anything is timed. Threads are pinned
(``--threads``, default 1) for numpy's BLAS, faiss and usearch alike. GPU rows run when faiss sees a GPU (the
``gpu`` extra) and are written as skipped, with the reason, otherwise.

Server index (``CatalogIndex``, what ``/search`` and publish use) on real-like catalogs: the release embedder's
vectors of the shared photos (``../shared/data/coins211``; half of each class's photos are catalog references,
the other half are the queries) plus synthetic distractor coins drawn to look like real ones: a distractor
coin's centre is drawn from a Gaussian fitted to the real class centres (mean and full covariance), and each of
its references is that centre plus the residual (photo minus its class mean) of a random real photo, then
normalised; a distractor coin gets as many references as a random real class has. Recall@1 / @5: the share of
queries whose top coin / top-5 coins from the IVF index are those of the exact index. Near-duplicate scan:
``CatalogIndex.near_duplicates`` (k-NN) on that catalog; ``--dup-baseline`` also times the previous scan (a faiss
range search over the flat index, O(n^2)) and checks both find the same pairs.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import ROOT, seed_everything, write_result

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
    ivf_nprobes: tuple[int, ...] = (8, 32)
    seed: int = 0
    # server index on real-like catalogs
    server_sizes: tuple[int, ...] = (100_000, 1_000_000)
    server_nprobes: tuple[int, ...] = (8, 32, 64)
    server_queries: int = 1000  # held-out real photos (at most as many as there are)
    server_single_queries: int = 200
    dup_cosine: float = 0.97
    dup_baseline: bool = False
    dup_baseline_max_vectors: int = 100_000  # the previous scan is O(n^2): hours at 1M


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


def _faiss_ivf_method(database: np.ndarray, nprobe: int, seed: int) -> _Method:
    from coinvision.sync_server.index import IndexOptions, _build_ivf

    started = time.perf_counter()
    opts = IndexOptions(nprobe=nprobe, seed=seed)
    index = _build_ivf(database, np.arange(len(database), dtype=np.int64), opts)
    build_s = time.perf_counter() - started
    size = faiss_size(index)
    return _Method(f"faiss IVFFlat fp32 (nlist={index.nlist}, nprobe={nprobe})", False, build_s,
                   size / len(database), lambda q: index.search(q, K)[1].astype(np.int64),
                   lambda q: index.search(q[None], K),
                   notes="the server's IVF (k-means 10 iterations on 40 points per cell); build includes training")


def faiss_size(index: Any) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def gpu_skip_reason() -> str | None:
    """None when faiss can run on a GPU here, else why not."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return "faiss-cpu is installed (no GPU support): install the 'gpu' extra (faiss-gpu) on a CUDA machine"
    if faiss.get_num_gpus() < 1:
        return "faiss has GPU support but sees no CUDA device"
    return None


def _faiss_gpu_method(database: np.ndarray) -> _Method:
    import faiss

    started = time.perf_counter()
    res = faiss.StandardGpuResources()
    flat = faiss.IndexFlatIP(database.shape[1])
    flat.add(database)
    index = faiss.index_cpu_to_gpu(res, 0, flat)
    build_s = time.perf_counter() - started
    return _Method("faiss GPU IndexFlatIP fp32", True, build_s, database.nbytes / len(database),
                   lambda q: index.search(q, K)[1].astype(np.int64), lambda q: index.search(q[None], K),
                   notes=f"GPU 0 of {faiss.get_num_gpus()}; build includes the copy to the GPU")


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
        *((f"faiss IVF {p}", lambda p=p: _faiss_ivf_method(database, p, cfg.seed)) for p in cfg.ivf_nprobes),
        ("faiss GPU", lambda: _faiss_gpu_method(database)),
    ]
    rows = []
    gpu_skip = gpu_skip_reason()
    for prefix, build in builders:
        if not wanted(prefix):
            continue
        if prefix == "faiss GPU" and gpu_skip:
            rows.append({"n_vectors": n, "method": "faiss GPU IndexFlatIP fp32", "skipped": gpu_skip})
            progress(f"  {n:>9,d} faiss GPU IndexFlatIP fp32: skipped ({gpu_skip})")
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


# ------------------------------------------------------------------------------------------ real-like catalogs
SHARED_PHOTOS = ROOT.parent / "shared" / "data" / "coins211"
CACHE_DIR = ROOT / "runs" / "cache" / "search_real"


def real_embeddings(photos_dir: Path = SHARED_PHOTOS, models_dir: Path | None = None, *, threads: int = 1,
                    limit: int | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The release embedder's vectors of the shared photos (``manifest.csv``: one row per photo and its class):
    ``(vectors (N, D) float32, class ids (N,), info)``, through the SDK's default pipeline (TFLite, what
    ``coinvision embed`` and the phone run). Cached as ``runs/cache/search_real/<embedder fingerprint>.npz``
    (``files``, ``vectors``); a cache holding some of the photos is used for those (``limit`` photos are
    embedded when there is none)."""
    import csv

    from coinvision.sdk import default_models_dir
    from coinvision.sdk.model_meta import ModelMetadata

    models = Path(models_dir) if models_dir else default_models_dir()
    fingerprint = ModelMetadata.read_sidecar(models / "embedder.tflite").fingerprint
    with open(photos_dir / "manifest.csv", newline="") as f:
        classes = {r["file"]: int(r["class_id"]) for r in csv.DictReader(f)}
    cache = CACHE_DIR / f"{fingerprint}.npz"
    info: dict[str, Any] = {"photos_in_manifest": len(classes), "embedder": fingerprint, "runtime": "tflite",
                            "cache": str(cache.relative_to(ROOT))}
    if cache.is_file():
        data = np.load(cache, allow_pickle=False)
        files = [str(f) for f in data["files"]]
        keep = [i for i, f in enumerate(files) if f in classes]
        info["photos"] = len(keep)
        return data["vectors"][keep].astype(np.float32), np.array([classes[files[i]] for i in keep]), info
    from coinvision.sdk.recognizer import Recognizer

    files = sorted(classes)[:limit]
    recognizer = Recognizer.from_dir(models, num_threads=threads)
    started = time.perf_counter()
    vectors = np.stack([recognizer.embed(photos_dir / f).vector for f in files]).astype(np.float32)
    log.warning("embedded %d shared photos in %.0f s (cached in %s)", len(files), time.perf_counter() - started,
                cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, files=np.array(files), vectors=vectors)
    info["photos"] = len(files)
    return vectors, np.array([classes[f] for f in files]), info


@dataclass(frozen=True)
class RealLikeCatalog:
    vectors: np.ndarray  # (n, dim) references: real catalog photos first, then distractors
    coins: list[str]
    queries: np.ndarray  # held-out real photos
    query_coins: list[str]
    real_references: int


def real_like_catalog(real: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> RealLikeCatalog:
    """Half of each class's real photos as references, the other half as queries, and distractor coins up to
    ``n`` references (see the module docstring for how they are drawn)."""
    classes = np.unique(labels)
    cat_rows, query_rows = [], []
    for c in classes:
        rows = rng.permutation(np.flatnonzero(labels == c))
        half = max(1, len(rows) // 2)
        cat_rows += rows[:half].tolist()
        query_rows += rows[half:].tolist()
    means = np.stack([real[labels == c].mean(axis=0) for c in classes])
    residuals = real - means[np.searchsorted(classes, labels)]
    refs_per_class = np.array([max(1, int(np.sum(labels == c)) // 2) for c in classes])
    centre_mean, centre_cov = means.mean(axis=0), np.cov(means, rowvar=False)
    vectors = [real[cat_rows]]
    coins = [f"real{labels[r]:04d}" for r in cat_rows]
    left, d = n - len(cat_rows), 0
    while left > 0:
        block = min(left, 1 << 16)
        counts = rng.choice(refs_per_class, size=block)  # at most `block` coins, cut to `block` references
        owner = np.repeat(np.arange(block), counts)[:block]
        centres = rng.multivariate_normal(centre_mean, centre_cov, size=block).astype(np.float32)
        v = centres[owner] + residuals[rng.integers(0, len(residuals), block)]
        vectors.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        coins += [f"dis{d + o:07d}" for o in owner]
        d += int(owner[-1]) + 1
        left -= block
    query_rows = rng.permutation(np.asarray(query_rows)).tolist()  # a cut to fewer queries keeps every class
    queries = real[query_rows]
    return RealLikeCatalog(np.ascontiguousarray(np.concatenate(vectors)[:n], dtype=np.float32), coins[:n],
                           np.ascontiguousarray(queries, dtype=np.float32),
                           [f"real{labels[r]:04d}" for r in query_rows], len(cat_rows))


def _coin_recall(got: list[list[tuple[str, float, int]]], want: list[list[tuple[str, float, int]]], k: int) -> float:
    return float(np.mean([len({c for c, _, _ in g[:k]} & {c for c, _, _ in w[:k]}) / min(k, max(1, len(w)))
                          for g, w in zip(got, want, strict=True)]))


def run_server_index(n: int, cfg: SearchConfig, real: np.ndarray, labels: np.ndarray,
                     progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """``CatalogIndex`` exact (CPU, GPU) vs IVF at several nprobe on a real-like catalog of ``n`` references."""
    from coinvision.sync_server.index import CatalogIndex, IndexOptions

    cat = real_like_catalog(real, labels, n, np.random.default_rng([cfg.seed, n, 1]))
    ids = np.arange(n, dtype=np.int64)
    queries = cat.queries[: cfg.server_queries]
    single = queries[: cfg.server_single_queries]
    base = {"n_vectors": n, "real_references": cat.real_references, "queries": len(queries)}

    def measure(name: str, build: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
        started = time.perf_counter()
        index = build()
        build_s = time.perf_counter() - started
        hits = index.search(queries, 5)  # the recall run, untimed
        for q in single[:3]:
            index.search(q, 5)
        times = np.empty(len(single))
        for i, q in enumerate(single):
            t0 = time.perf_counter()
            index.search(q, 5)
            times[i] = time.perf_counter() - t0
        top1 = float(np.mean([h[0][0] == c for h, c in zip(hits, cat.query_coins[: len(queries)], strict=True)]))
        return (index, hits), {**base, "index": name, "build_s": build_s,
                               "single_ms_median": float(np.median(times) * 1e3),
                               "single_ms_p90": float(np.percentile(times, 90) * 1e3), "top1_right_coin": top1}

    rows = []
    (_, exact_hits), row = measure("exact (flat, CPU)", lambda: CatalogIndex(
        cfg.dim, ids, cat.vectors, cat.coins, use_gpu=False, options=IndexOptions(kind="flat")))
    rows.append({**row, "recall@1": 1.0, "recall@5": 1.0})
    gpu_skip = gpu_skip_reason()
    if gpu_skip:
        rows.append({**base, "index": "exact (flat, GPU)", "skipped": gpu_skip})
    else:
        (_, hits), row = measure("exact (flat, GPU)", lambda: CatalogIndex(
            cfg.dim, ids, cat.vectors, cat.coins, use_gpu=True, options=IndexOptions(kind="flat")))
        rows.append({**row, "recall@1": _coin_recall(hits, exact_hits, 1),
                     "recall@5": _coin_recall(hits, exact_hits, 5)})
    ivf = None
    for nprobe in cfg.server_nprobes:
        opts = IndexOptions(kind="ivf", nprobe=nprobe, seed=cfg.seed)
        if ivf is None:
            (ivf, hits), row = measure(f"IVF nprobe={nprobe}", lambda opts=opts: CatalogIndex(
                cfg.dim, ids, cat.vectors, cat.coins, use_gpu=False, options=opts))
        else:  # same cells, another nprobe: no retraining (build time is the first one's)
            prev = ivf
            (_, hits), row = measure(f"IVF nprobe={nprobe}", lambda opts=opts, prev=prev: _with_options(prev, opts))
            row["build_s"] = rows[-1]["build_s"]
        row["cells"] = ivf.index.nlist
        rows.append({**row, "recall@1": _coin_recall(hits, exact_hits, 1),
                     "recall@5": _coin_recall(hits, exact_hits, 5)})
    for r in rows:
        if "skipped" in r:
            progress(f"  {n:>9,d} server {r['index']:<22} skipped ({r['skipped']})")
        else:
            progress(f"  {n:>9,d} server {r['index']:<22} build {r['build_s']:7.1f} s  single "
                     f"{r['single_ms_median']:8.3f} ms (p90 {r['single_ms_p90']:.3f})  "
                     f"recall@1 {r['recall@1']:.4f}  @5 {r['recall@5']:.4f}")
    return rows


def _with_options(index: Any, opts: Any) -> Any:
    """``index`` (an IVF snapshot) searched with other options, sharing its faiss index."""
    import copy

    other = copy.copy(index)
    other.options = opts
    return other


def run_duplicate_scan(n: int, cfg: SearchConfig, real: np.ndarray, labels: np.ndarray,
                       progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The publish-time near-duplicate scan on a real-like catalog (default index options: exact flat search, so
    the scan builds its own IVF above 20k references), and with ``dup_baseline`` the previous range search."""
    from coinvision.sync_server.index import CatalogIndex, IndexOptions

    cat = real_like_catalog(real, labels, n, np.random.default_rng([cfg.seed, n, 1]))
    index = CatalogIndex(cfg.dim, np.arange(n), cat.vectors, cat.coins, use_gpu=False,
                         options=IndexOptions(kind="flat", seed=cfg.seed))
    started = time.perf_counter()
    pairs = index.near_duplicates(cfg.dup_cosine)
    scan_s = time.perf_counter() - started
    rows = [{"n_vectors": n, "scan": "k-NN (IVF, nprobe 4, k 16 adaptive) + float64 re-score", "seconds": scan_s,
             "coin_pairs": len(pairs), "min_cosine": cfg.dup_cosine}]
    if cfg.dup_baseline and n <= cfg.dup_baseline_max_vectors:
        started = time.perf_counter()
        lims, _, pos = index.index.range_search(cat.vectors, float(np.nextafter(np.float32(cfg.dup_cosine), -np.inf)))
        coins = np.asarray(cat.coins)
        old: set[tuple[str, str]] = set()
        for i in range(n):  # what the previous scan did per reference
            for p in pos[lims[i]:lims[i + 1]]:
                if coins[i] < coins[p]:
                    old.add((str(coins[i]), str(coins[p])))
        base_s = time.perf_counter() - started
        new = {(p.coin_a, p.coin_b) for p in pairs}
        rows.append({"n_vectors": n, "scan": "previous: range search over the flat index (O(n^2))", "seconds": base_s,
                     "coin_pairs": len(old), "min_cosine": cfg.dup_cosine,
                     "same_pairs_as_knn": old == new, "pairs_only_in_previous": len(old - new),
                     "pairs_only_in_knn": len(new - old)})
    for r in rows:
        progress(f"  {n:>9,d} near-duplicates {r['scan']:<58} {r['seconds']:8.1f} s  {r['coin_pairs']} coin pairs")
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
                        help="comma-separated catalog sizes (overrides --quick's; no server section unless "
                        "--server-sizes is given too)")
    parser.add_argument("--threads", type=int, default=1, help="threads for numpy BLAS, faiss and usearch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-sizes", type=lambda s: tuple(int(v) for v in s.split(",") if v),
                        help="catalog sizes for the server index and near-duplicate scan ('' for none)")
    parser.add_argument("--methods", type=lambda s: tuple(s.split(",")),
                        help="comma-separated method name prefixes (pack, faiss, usearch exact, usearch HNSW)")
    parser.add_argument("--dup-baseline", action="store_true",
                        help="also time the previous O(n^2) near-duplicate scan (minutes at 100k)")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/search.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = SearchConfig(threads=args.threads, seed=args.seed)
    if args.quick:
        cfg = SearchConfig(sizes=(10_000, 100_000), batch_queries=256, single_queries=50, threads=args.threads,
                           seed=args.seed, ivf_nprobes=(32,), server_sizes=(100_000,), server_nprobes=(8, 32),
                           server_queries=500, server_single_queries=100)
    if args.sizes:  # vector-level sizes only; the server section then runs at --server-sizes alone
        cfg = SearchConfig(**{**asdict(cfg), "sizes": args.sizes, "server_sizes": ()})
    if args.server_sizes is not None:
        cfg = SearchConfig(**{**asdict(cfg), "server_sizes": args.server_sizes})
    if args.dup_baseline:
        cfg = SearchConfig(**{**asdict(cfg), "dup_baseline": True})
    seed_everything(cfg.seed)
    limits = _limit_threads(cfg.threads)
    print(f"search benchmark: sizes {cfg.sizes}, dim {cfg.dim}, k {K}, {cfg.threads} thread(s)", flush=True)
    rows: list[dict[str, Any]] = []
    for n in cfg.sizes:
        rows += run_size(n, cfg, methods=args.methods, progress=lambda line: print(line, flush=True))
    server_rows: list[dict[str, Any]] = []
    dup_rows: list[dict[str, Any]] = []
    real_info: dict[str, Any] = {}
    if cfg.server_sizes:
        real, labels, real_info = real_embeddings(threads=cfg.threads, limit=400 if args.quick else None)
        print(f"server index on real-like catalogs: {real_info['photos']} real photos "
              f"({len(np.unique(labels))} classes) + distractors", flush=True)
        for n in cfg.server_sizes:
            server_rows += run_server_index(n, cfg, real, labels, progress=lambda line: print(line, flush=True))
            dup_rows += run_duplicate_scan(n, cfg, real, labels, progress=lambda line: print(line, flush=True))
    del limits
    table = [{
        "vectors": r["n_vectors"], "method": r["method"], "batch q/s": r.get("batch_queries_per_s", ""),
        "single q/s": r.get("single_queries_per_s", ""), "single ms (median)": r.get("single_ms_median", ""),
        "top-10 agreement": r.get("top10_agreement", ""), "bytes/vector": r.get("bytes_per_vector", ""),
        "build s": r.get("build_s", ""), "notes": r.get("skipped", ""),
    } for r in rows]
    table += [{
        "vectors": r["n_vectors"], "method": f"server CatalogIndex {r['index']} (real-like, top-5 coins)",
        "single q/s": 1e3 / r["single_ms_median"] if "single_ms_median" in r else "",
        "single ms (median)": r.get("single_ms_median", ""), "recall@1": r.get("recall@1", ""),
        "recall@5": r.get("recall@5", ""), "build s": r.get("build_s", ""), "notes": r.get("skipped", ""),
    } for r in server_rows]
    table += [{
        "vectors": r["n_vectors"], "method": f"near-duplicate scan: {r['scan']}", "build s": r["seconds"],
        "notes": f"{r['coin_pairs']} coin pairs at cosine >= {r['min_cosine']}"
                 + (f"; same pairs as k-NN: {r['same_pairs_as_knn']}" if "same_pairs_as_knn" in r else ""),
    } for r in dup_rows]
    results = {"config": asdict(cfg), "k": K, "ground_truth": "faiss IndexFlatIP fp32 (checked against float64)",
               "rows": rows, "server_index": server_rows, "near_duplicate_scan": dup_rows, "real_vectors": real_info,
               "gpu": gpu_skip_reason() or "available"}
    path = write_result("search", results, table, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
