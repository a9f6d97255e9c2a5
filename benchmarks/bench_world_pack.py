"""World-sized packs: the ``ivfpq`` encoding against the int8 and fp32 packs at 100k and 800k vectors.

    python -m benchmarks.bench_world_pack --quick   # 20k vectors, real-like distractors only (< 2 min)
    python -m benchmarks.bench_world_pack           # 100k and 800k vectors, real-like and random distractors

Catalog and queries are REAL embeddings (release models, TFLite, one thread) of the held-out split's unseen
classes: ``runs/split/catalog`` (reference photos) and ``runs/split/query``. When they are missing, the benchmark
makes them (gitignored, a few minutes, once) from the shared photos (``--data``, default ``../shared/data``)::

    coinvision data split ../shared/data/coins211 ../shared/data/euro_phone --out runs/split/splits.csv \\
        --materialize runs/split
    for s in catalog query train; do coinvision embed runs/split/$s --out runs/world_pack/$s.npz --threads 1; done

Distractor coins fill the pack up to the size, two vectors per coin (two photos of one side), drawn two ways:
``real-like``: a Gaussian fitted to the real embeddings of the *training* classes (runs/split/train): a coin's
centre from N(mean, between-class covariance) of the class means, each photo centre + N(0, pooled within-class
covariance), normalised; ``random``: uniform random unit vectors (too easy: they sit far from every real coin).
A query's coin is its class folder; Recall@k = the true coin among the top-k coins. Search latency is one
``Pack.search(q, k=5)`` call per query, numpy on one thread (``OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import MISSING_INPUTS_EXIT, ROOT, seed_everything, write_result

__all__ = ["Embeddings", "distractors", "load_embeddings", "main", "prepare_embeddings"]

K = 5
PER_COIN = 2
SPLITS = ("catalog", "query", "train")
DATASETS = ("coins211", "euro_phone")


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # (n, dim) float64, unit rows
    labels: np.ndarray  # (n,) class folder names


def prepare_embeddings(folder: Path, data: Path, split_dir: Path = ROOT / "runs" / "split") -> bool:
    """Make the missing ``<split>.npz`` in ``folder`` the documented way (the CLI: split, then embed with the release
    models); False when the shared photos are not at ``data`` (nothing is made then)."""
    missing = [s for s in SPLITS if not (folder / f"{s}.npz").is_file()]
    if not missing:
        return True
    if not all((data / d).is_dir() for d in DATASETS):
        print(f"bench_world_pack: {', '.join(f'{folder}/{s}.npz' for s in missing)} missing and no shared photos at "
              f"{data} to make them from ({' and '.join(DATASETS)}); pass --data", file=sys.stderr)
        return False
    cli = [sys.executable, "-m", "coinvision.cli.main"]
    if not (split_dir / "splits.csv").is_file():
        subprocess.run([*cli, "data", "split", *(str(data / d) for d in DATASETS), "--out",
                        str(split_dir / "splits.csv"), "--materialize", str(split_dir)], check=True)
    for s in missing:
        print(f"world pack: embedding {split_dir / s} with the release models (once)", flush=True)
        subprocess.run([*cli, "embed", str(split_dir / s), "--out", str(folder / f"{s}.npz"), "--threads", "1"],
                       check=True)
    return True


def load_embeddings(path: Path) -> Embeddings:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: make it with `coinvision embed` (see this module's docstring)")
    data = np.load(path, allow_pickle=False)
    keep = ~data["no_coin"]
    vecs = data["embeddings"][keep].astype(np.float64)
    labels = np.array([str(p).split("/")[0] for p in data["paths"][keep]])
    return Embeddings(vecs / np.linalg.norm(vecs, axis=1, keepdims=True), labels)


def distractors(kind: str, coins: int, train: Embeddings, rng: np.random.Generator) -> np.ndarray:
    """``(coins * PER_COIN, dim)`` unit vectors, ``PER_COIN`` consecutive rows per distractor coin."""
    dim = train.vectors.shape[1]
    if kind == "random":
        out = rng.standard_normal((coins * PER_COIN, dim))
    else:
        classes = np.unique(train.labels)
        means = np.stack([train.vectors[train.labels == c].mean(axis=0) for c in classes])
        within = np.concatenate([train.vectors[train.labels == c] - means[i] for i, c in enumerate(classes)])
        centres = rng.multivariate_normal(means.mean(axis=0), np.cov(means.T), size=coins)
        out = np.repeat(centres, PER_COIN, axis=0) + rng.multivariate_normal(
            np.zeros(dim), np.cov(within.T), size=coins * PER_COIN)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _evaluate(pack: Any, queries: Embeddings, timed: int) -> dict[str, float]:
    hits1 = hits5 = 0
    for results, label in zip(pack.search_batch(queries.vectors, K), queries.labels, strict=True):
        ids = [cid for cid, _ in results]
        hits1 += bool(ids) and ids[0] == label
        hits5 += label in ids
    times = []
    for q in queries.vectors[:timed]:
        started = time.perf_counter()
        pack.search(q, K)
        times.append(1000.0 * (time.perf_counter() - started))
    return {
        "recall@1": hits1 / len(queries.labels), "recall@5": hits5 / len(queries.labels),
        "search ms median": statistics.median(times), "search ms p95": float(np.percentile(times, 95)),
    }


def _reprobed(pack: Any, divisor: int, row: dict[str, Any], queries: Embeddings, timed: int) -> dict[str, Any]:
    """The same ivfpq pack searched with nprobe = L / divisor (a header field: the bytes differ only there)."""
    from coinvision.sdk.pack import Pack, read_pack

    ivf = pack._ivf
    nprobe = max(1, ivf.lists // divisor)
    data = bytearray(pack.to_bytes())
    data[66:68] = nprobe.to_bytes(2, "little")  # nprobe: offset 64 + 2 (docs/PACK_FORMAT.md 8.1)
    data[-32:] = hashlib.sha256(bytes(data[:-32])).digest()
    other: Pack = read_pack(bytes(data))
    out = {**row, "quant": f"ivfpq nprobe={nprobe}/{ivf.lists}"}
    out.update(_evaluate(other, queries, timed))
    print(out, flush=True)
    return out


def run_size(n: int, kind: str, catalog: Embeddings, queries: Embeddings, train: Embeddings, quants: tuple[str, ...],
             timed: int, seed: int, probe_divisors: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    from coinvision.sdk.pack import Pack

    rng = np.random.default_rng(seed)
    coins = max(0, (n - len(catalog.labels)) // PER_COIN)
    extra = distractors(kind, coins, train, rng)
    vectors = np.concatenate([catalog.vectors, extra])
    ids = list(catalog.labels) + [f"x{j:06d}" for j in np.repeat(np.arange(coins), PER_COIN).tolist()]
    rows = []
    for quant in quants:
        started = time.perf_counter()
        pack = Pack.from_vectors(vectors, ids, [], catalog_id="world", catalog_version=1, model_fingerprint="bench",
                                 quant=quant, created_at=0)
        size = len(pack.to_bytes())
        build_s = time.perf_counter() - started
        row: dict[str, Any] = {
            "vectors": len(vectors), "distractors": kind,
            "quant": quant if quant != "ivfpq" else f"ivfpq nprobe={pack._ivf.nprobe}/{pack._ivf.lists}",
            "coins": pack.coin_count,
            "file MB": size / 1e6, "vector section MB": pack.vector_bytes / 1e6,
            "bytes/vector": pack.vector_bytes / len(vectors), "build s": build_s,
        }
        row.update(_evaluate(pack, queries, timed))
        print(row, flush=True)
        rows.append(row)
        if quant == "ivfpq":
            for div in probe_divisors:
                rows.append(_reprobed(pack, div, row, queries, timed))
        del pack
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20k vectors, real-like distractors (< 2 min)")
    parser.add_argument("--sizes", type=lambda s: tuple(int(v) for v in s.split(",")), default=None)
    parser.add_argument("--distractors", default=None, help="comma list of real-like,random")
    parser.add_argument("--embeddings", type=Path, default=ROOT / "runs" / "world_pack",
                        help="folder of catalog.npz, query.npz, train.npz")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="the shared photos (coins211, euro_phone) the embeddings are made from when missing")
    parser.add_argument("--timed-queries", type=int, default=200, help="queries timed one by one per pack")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/world_pack.json)")
    args = parser.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS") != "1" or os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        print("note: set OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 for one-thread figures", file=sys.stderr)
    sizes = args.sizes or ((20_000,) if args.quick else (100_000, 800_000))
    kinds = tuple(args.distractors.split(",")) if args.distractors else (
        ("real-like",) if args.quick else ("real-like", "random"))
    seed_everything(args.seed)
    if not prepare_embeddings(args.embeddings, args.data):
        return MISSING_INPUTS_EXIT
    catalog, queries, train = (load_embeddings(args.embeddings / f"{s}.npz") for s in SPLITS)
    print(f"world pack: catalog {len(catalog.labels)} real vectors ({len(set(catalog.labels))} coins), "
          f"{len(queries.labels)} real queries, sizes {sizes}, distractors {kinds}", flush=True)
    table: list[dict[str, Any]] = []
    for n in sizes:
        for kind in kinds:
            table += run_size(n, kind, catalog, queries, train, ("fp32", "int8", "ivfpq"), args.timed_queries,
                              args.seed, () if args.quick else (4, 2))
    results = {"k": K, "vectors_per_distractor_coin": PER_COIN, "catalog_vectors": len(catalog.labels),
               "catalog_coins": len(set(catalog.labels)), "queries": len(queries.labels), "rows": table}
    path = write_result("world_pack", results, table, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
