"""Per-catalog Faiss indexes: inner product (= cosine on unit vectors), exact or IVF, on the GPU when there is one.

An index is an immutable snapshot. Writers build the next snapshot aside (a clone plus the change, or a full
rebuild) and swap the registry's reference under a lock, so a search never sees a half-updated index and
never waits for a build.

Which index (:class:`IndexOptions`, ``ServerConfig.index_kind`` / ``index_approx_min_vectors``):

- ``flat``: exact ``IndexFlatIP``; on the GPU when faiss has GPU support and sees a device (same results).
- ``ivf``: ``IndexIVFFlat`` (approximate: a query scans the ``nprobe`` nearest of ~4·√n k-means cells), CPU.
- ``auto`` (default): ``flat`` on a GPU whatever the size (exact brute force there is faster than IVF on the
  CPU); on the CPU ``flat`` below ``approx_min_vectors`` references and ``ivf`` from there on.

Recall of ``ivf`` against ``flat`` and the latencies behind the default are measured by
``benchmarks/bench_search.py`` (see benchmarks/README.md).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import faiss
import numpy as np
from coinvision.sdk.errors import ConfigError

__all__ = [
    "INDEX_KINDS",
    "CatalogIndex",
    "DuplicatePair",
    "IndexOptions",
    "IndexRegistry",
    "gpu_available",
    "near_duplicate_pairs",
]

log = logging.getLogger(__name__)

INDEX_KINDS = ("auto", "flat", "ivf")
# faiss GPU k-selection (and our cap for IVF, where a larger k only returns -1 padding) stops at 2048 neighbours.
_K_MAX_LIMITED = 2048
# Candidate pairs are re-scored exactly in float64; the index's own float32 scores may sit this far below.
_SCORE_SLACK = 1e-4


@dataclass(frozen=True)
class IndexOptions:
    """How a catalog's references are indexed (see the module docstring for the kinds)."""

    kind: str = "auto"
    approx_min_vectors: int = 500_000  # ``auto`` switches from exact to IVF on the CPU from this many references
    nprobe: int = 64  # IVF cells a search scans: recall@1 0.99 vs exact on real-like catalogs (bench_search.py)
    cells_per_sqrt_n: float = 4.0  # IVF cells = this * sqrt(n), the usual faiss guideline
    train_points_per_cell: int = 40  # k-means sample (faiss wants >= 39 per cell)
    train_iterations: int = 10
    # Near-duplicate scan: exact k-NN up to this many references; above, an IVF k-NN scanning ``scan_nprobe`` cells.
    scan_exact_max_vectors: int = 20_000
    scan_nprobe: int = 4
    scan_k: int = 16  # neighbours asked per reference first; rows whose k-th is still a duplicate ask 4x more
    use_gpu: bool | None = None  # None: when :func:`gpu_available`
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"index kind {self.kind!r} is not one of {', '.join(INDEX_KINDS)}; "
                              "set index_kind (COINVISION_INDEX_KIND) to one of them")
        for name in ("approx_min_vectors", "nprobe", "train_points_per_cell", "train_iterations", "scan_nprobe",
                     "scan_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"index option {name}={getattr(self, name)}: must be at least 1")
        if self.cells_per_sqrt_n <= 0:
            raise ConfigError(f"index option cells_per_sqrt_n={self.cells_per_sqrt_n}: must be above 0")


def gpu_available() -> bool:
    """True when this faiss build has GPU support (the ``gpu`` extra) and sees a device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


# One StandardGpuResources (a stream, cuBLAS handle and scratch memory) serves every GPU index of the process.
# It is not thread-safe, so every call that touches it — building a GPU index, searching one, freeing one — holds
# this lock; the threaded server's CPU indexes are searched concurrently without it. Re-entrant because a GPU
# index may be freed by the garbage collector inside a thread that already holds the lock.
_gpu_lock = threading.RLock()
_gpu_resources: Any = None


def _gpu_res() -> Any:
    """The shared resources, created on first use; call with ``_gpu_lock`` held."""
    global _gpu_resources
    if _gpu_resources is None:
        _gpu_resources = faiss.StandardGpuResources()
    return _gpu_resources


def _flat_to_gpu(flat: faiss.Index) -> faiss.Index | None:
    """``flat`` copied to GPU 0, or None (logged) when that fails: the caller keeps the CPU index."""
    try:
        with _gpu_lock:
            return faiss.index_cpu_to_gpu(_gpu_res(), 0, flat)
    except (RuntimeError, AttributeError) as exc:  # no device after all, out of GPU memory, a CPU-only faiss
        log.warning("faiss GPU index unavailable (%s); this catalog index stays on the CPU", exc)
        return None


class _GpuIndex:
    """A GPU index whose every use (search, free) holds ``_gpu_lock``."""

    def __init__(self, index: faiss.Index) -> None:
        self._index = index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with _gpu_lock:
            return self._index.search(queries, k)

    def __del__(self) -> None:
        index, self._index = getattr(self, "_index", None), None
        if index is not None:
            with _gpu_lock:
                del index


def _n_cells(n: int, opts: IndexOptions) -> int:
    return max(1, min(round(opts.cells_per_sqrt_n * math.sqrt(n)), n // opts.train_points_per_cell))


def _ivf_search(index: faiss.Index, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` with a per-call ``nprobe`` (no shared state: requests search one snapshot concurrently).

    ``faiss.contrib.torch_utils`` (imported by pytorch-metric-learning, so by any process that also trains or
    evaluates with it) replaces ``Index.search`` with a wrapper that takes no ``params``; it keeps faiss's own
    numpy method as ``search_numpy``, which does.
    """
    search = getattr(index, "search_numpy", index.search)
    return search(queries, k, params=faiss.SearchParametersIVF(nprobe=nprobe))


def _build_ivf(vectors: np.ndarray, labels: np.ndarray, opts: IndexOptions) -> faiss.IndexIVFFlat:
    """An IVF index over ``vectors`` labelled ``labels``, k-means trained on a seeded sample."""
    n, dim = vectors.shape
    cells = _n_cells(n, opts)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = opts.train_iterations  # 10 instead of faiss's 25: the cells barely move after that
    ivf.cp.seed = opts.seed
    sample = min(n, cells * opts.train_points_per_cell)
    rows = np.random.default_rng(opts.seed).choice(n, sample, replace=False) if sample < n else slice(None)
    ivf.train(np.ascontiguousarray(vectors[rows]))
    ivf.add_with_ids(vectors, labels)
    ivf.nprobe = opts.nprobe
    return ivf


@dataclass(frozen=True)
class DuplicatePair:
    coin_a: str
    coin_b: str
    cosine: float
    image_a: int
    image_b: int


class CatalogIndex:
    """Snapshot of one catalog's reference embeddings. ``ids`` are ReferenceImage ids (int64).

    ``kind`` is the index actually built (``"flat"`` or ``"ivf"``), ``use_gpu`` whether it lives on the GPU.
    Faiss labels are row positions for ``flat`` and reference ids for ``ivf`` (so removing references is a
    ``remove_ids`` on a clone, not a rebuild).
    """

    def __init__(
        self,
        dim: int,
        ids: np.ndarray,
        vectors: np.ndarray,
        coin_ids: Sequence[str],
        *,
        generation: int = 0,
        use_gpu: bool | None = None,
        options: IndexOptions | None = None,
    ) -> None:
        self.dim = dim
        self.ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
        if len(self.ids) != len(self.vectors) or len(coin_ids) != len(self.ids):
            raise ValueError("ids, vectors and coin_ids must have one entry per reference")
        self.coin_ids = np.asarray(list(coin_ids), dtype=object)
        self.generation = generation
        opts = options or IndexOptions()
        self.options = opts if use_gpu is None else replace(opts, use_gpu=use_gpu)
        self._scan_lock = threading.Lock()
        self._scan_ivf: faiss.Index | None = None
        self._build()

    # ------------------------------------------------------------------ building
    def _wanted_kind(self, n: int, gpu: bool) -> str:
        kind = self.options.kind
        if kind == "auto":
            return "flat" if gpu or n < self.options.approx_min_vectors else "ivf"
        return kind

    def _build(self) -> None:
        gpu = gpu_available() if self.options.use_gpu is None else self.options.use_gpu
        if gpu and self.options.use_gpu and not gpu_available():
            log.warning("a GPU index was asked for but faiss has no GPU support or sees no device (install the "
                        "'gpu' extra on a CUDA machine); this catalog index stays on the CPU")
            gpu = False
        self.kind = self._wanted_kind(len(self.ids), gpu)
        self._sorter: np.ndarray | None = None
        self._trained_n = len(self.ids)
        if self.kind == "ivf":
            if gpu:
                log.info("IVF catalog indexes run on the CPU; use index kind 'flat' or 'auto' for the GPU")
            self.use_gpu = False
            self.index: Any = _build_ivf(self.vectors, self.ids, self.options) if len(self.ids) else None
            self._sorter = np.argsort(self.ids, kind="stable")
            return
        # Positions, not database ids, go into faiss: the flat index stays a plain (GPU-capable) IndexFlatIP.
        flat = faiss.IndexFlatIP(self.dim)
        if len(self.vectors):
            flat.add(self.vectors)
        on_gpu = _flat_to_gpu(flat) if gpu else None
        self.use_gpu = on_gpu is not None
        self.index = _GpuIndex(on_gpu) if on_gpu is not None else flat

    def _derived(self, ids: np.ndarray, vectors: np.ndarray, coin_ids: np.ndarray, generation: int) -> CatalogIndex:
        """A snapshot sharing this one's options, with ``index`` still to be set by the caller."""
        new = CatalogIndex.__new__(CatalogIndex)
        new.dim, new.generation, new.options = self.dim, generation, self.options
        new.ids, new.vectors, new.coin_ids = ids, vectors, coin_ids
        new.kind, new.use_gpu, new._sorter, new._trained_n = self.kind, self.use_gpu, None, self._trained_n
        new._scan_lock, new._scan_ivf = threading.Lock(), None
        return new

    def _rebuilt(self, ids: np.ndarray, vectors: np.ndarray, coin_ids: Sequence[str], generation: int) -> CatalogIndex:
        return CatalogIndex(self.dim, ids, vectors, coin_ids, generation=generation, options=self.options)

    def __len__(self) -> int:
        return len(self.ids)

    def with_added(
        self, ids: np.ndarray, vectors: np.ndarray, coin_ids: Sequence[str], generation: int
    ) -> CatalogIndex:
        """A new snapshot with these references added (a CPU index is cloned and extended, not rebuilt)."""
        if not len(self.ids):
            vectors = np.asarray(vectors, dtype=np.float32)
            return CatalogIndex(vectors.shape[-1], ids, vectors, coin_ids, generation=generation,
                                options=self.options)
        add = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        add_ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        all_ids = np.concatenate([self.ids, add_ids])
        all_vectors = np.concatenate([self.vectors, add])
        all_coins = np.concatenate([self.coin_ids, np.asarray(list(coin_ids), dtype=object)])
        if (self.use_gpu or self._wanted_kind(len(all_ids), self.use_gpu) != self.kind
                or (self.kind == "ivf" and len(all_ids) > 4 * self._trained_n)):
            # GPU indexes are rebuilt from the vectors; crossing the size threshold changes the kind; an IVF that
            # grew 4-fold since its k-means is retrained, so it keeps ~4·sqrt(n) cells of even size.
            return self._rebuilt(all_ids, all_vectors, list(all_coins), generation)
        new = self._derived(all_ids, all_vectors, all_coins, generation)
        new.index = faiss.clone_index(self.index)
        if self.kind == "ivf":
            new.index.add_with_ids(add, add_ids)
            new._sorter = np.argsort(all_ids, kind="stable")
        else:
            new.index.add(add)
        return new

    def without(self, remove_ids: Sequence[int], generation: int) -> CatalogIndex:
        remove = np.asarray(list(remove_ids), dtype=np.int64)
        keep = ~np.isin(self.ids, remove)
        ids, vectors, coins = self.ids[keep], self.vectors[keep], self.coin_ids[keep]
        if self.kind != "ivf" or not len(ids) or self._wanted_kind(len(ids), False) != "ivf":
            return self._rebuilt(ids, vectors, list(coins), generation)  # a flat rebuild is a memcpy
        new = self._derived(ids, vectors, coins, generation)
        new.index = faiss.clone_index(self.index)
        new.index.remove_ids(faiss.IDSelectorBatch(remove))
        new._sorter = np.argsort(ids, kind="stable")
        return new

    # ------------------------------------------------------------------ searching
    def _positions(self, labels: np.ndarray) -> np.ndarray:
        """faiss labels -> row positions (-1 stays -1)."""
        if self._sorter is None:
            return labels
        sorted_ids = self.ids[self._sorter]
        at = np.clip(np.searchsorted(sorted_ids, labels), 0, len(sorted_ids) - 1)
        return np.where(labels >= 0, self._sorter[at], -1)

    def _k_max(self) -> int:
        return min(len(self.ids), _K_MAX_LIMITED) if self.use_gpu or self.kind == "ivf" else len(self.ids)

    def _search(self, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row positions) of the ``k`` nearest references; -1 positions where fewer were found."""
        if self.kind == "ivf":
            scores, labels = _ivf_search(self.index, queries, k, nprobe or self.options.nprobe)
            return scores, self._positions(labels)
        return self.index.search(queries, k)  # a _GpuIndex takes the GPU lock itself

    def search(self, queries: np.ndarray, top_k: int) -> list[list[tuple[str, float, int]]]:
        """Per query: up to ``top_k`` distinct coins ``(coin_id, cosine, best reference id)``, best first.

        A coin's score is the max over its references (what the device pack search does).
        """
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        n = len(self.ids)
        if not n:
            return [[] for _ in range(len(q))]
        out: list[list[tuple[str, float, int]]] = [[] for _ in range(len(q))]
        todo = np.arange(len(q))
        k_max = self._k_max()
        k = min(k_max, top_k * 8)
        # Neighbours are references, answers are coins: when one coin's references fill the first k
        # neighbours, ask again with a larger k until top_k distinct coins (or every reference) are seen.
        while len(todo):
            scores, pos = self._search(q[todo], k)
            again = []
            for row, row_scores, row_pos in zip(todo, scores, pos, strict=True):
                seen: dict[str, tuple[float, int]] = {}
                for s, p in zip(row_scores, row_pos, strict=True):
                    if p < 0:
                        continue
                    coin = str(self.coin_ids[p])
                    if coin not in seen:
                        seen[coin] = (float(s), int(self.ids[p]))
                        if len(seen) == top_k:
                            break
                if len(seen) < top_k and k < k_max:
                    again.append(row)
                else:
                    out[row] = [(c, s, i) for c, (s, i) in seen.items()]
            todo = np.asarray(again, dtype=np.int64)
            k = min(k_max, k * 4)
        return out

    # ------------------------------------------------------------------ near-duplicates
    def _scan_search(self) -> tuple[Any, int, str]:
        """``(search(queries, k) -> (scores, positions), k_max, what)`` for the near-duplicate scan."""
        n = len(self.ids)
        if self.use_gpu or (self.kind == "flat" and n <= self.options.scan_exact_max_vectors):
            return self._search, self._k_max(), "exact"
        if self.kind == "ivf":
            return (lambda q, k: self._search(q, k, self.options.scan_nprobe)), self._k_max(), "ivf"
        with self._scan_lock:  # built once per snapshot, on the first scan (publish, GET duplicates)
            if self._scan_ivf is None:
                self._scan_ivf = _build_ivf(self.vectors, np.arange(n, dtype=np.int64), self.options)
            ivf = self._scan_ivf
        nprobe = self.options.scan_nprobe
        return (lambda q, k: _ivf_search(ivf, q, k, nprobe)), min(n, _K_MAX_LIMITED), "ivf (scan only)"

    def near_duplicates(self, min_cosine: float) -> list[DuplicatePair]:
        """Pairs of different coins with references at cosine >= ``min_cosine`` (best pair per coin pair).

        A k-NN self-search (O(n·k) with the IVF scan above ``scan_exact_max_vectors``); a reference whose
        ``k``-th neighbour is still above the threshold asks again with 4x ``k``, so a coin with many near-identical
        references cannot hide another coin's look-alike behind them. See :func:`near_duplicate_pairs`.
        """
        n = len(self.ids)
        if n < 2:
            return []
        search, k_max, what = self._scan_search()
        pairs = near_duplicate_pairs(self.vectors, self.coin_ids, min_cosine, search, k_max=k_max,
                                     k=self.options.scan_k)
        log.info("near-duplicate scan (%s) over %d references: %d coin pairs at cosine >= %.3f", what, n,
                 len(pairs), min_cosine)
        return [DuplicatePair(str(self.coin_ids[i]), str(self.coin_ids[j]), s, int(self.ids[i]), int(self.ids[j]))
                for i, j, s in pairs]


def near_duplicate_pairs(
    vectors: np.ndarray, coins: np.ndarray, min_cosine: float, search: Any, *, k_max: int, k: int = 16,
) -> list[tuple[int, int, float]]:
    """``(row_a, row_b, cosine)`` per pair of different coins ``(coin_a < coin_b)`` whose best pair of references
    has cosine >= ``min_cosine``, best first (ties: coin names).

    ``search(queries, k) -> (scores, row positions)`` is any k-NN over ``vectors`` (exact, IVF, GPU). Candidates
    within ``_SCORE_SLACK`` of the threshold are re-scored in float64, so the ``>=`` boundary and the reported
    cosine do not depend on which index found them. Rows still saturated at ``k_max`` neighbours (more than
    ``k_max`` references within the threshold) are finished by an exact scan of those rows only.
    """
    n = len(vectors)
    codes = np.unique(np.asarray(coins, dtype=str), return_inverse=True)[1]  # sorted: code order = name order
    floor = min_cosine - _SCORE_SLACK
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    todo = np.arange(n)
    k = min(k, n)
    while len(todo):
        scores, pos = search(np.ascontiguousarray(vectors[todo]), k)
        hit = (scores >= floor) & (pos >= 0)
        rows = np.broadcast_to(todo[:, None], pos.shape)
        found_i.append(rows[hit])
        found_j.append(pos[hit])
        saturated = hit[:, -1]  # its k-th neighbour is a candidate too: there may be more
        todo = todo[saturated]
        if len(todo) and k >= k_max:
            for start in range(0, len(todo), 256):  # exact, bounded memory
                block = todo[start:start + 256]
                s = vectors[block] @ vectors.T
                bi, bj = np.nonzero(s >= floor)
                found_i.append(block[bi])
                found_j.append(bj)
            break
        k = min(k_max, k * 4)
    i = np.concatenate(found_i) if found_i else np.zeros(0, np.int64)
    j = np.concatenate(found_j) if found_j else np.zeros(0, np.int64)
    # Orient every candidate as (lower coin, higher coin): k-NN is not symmetric, a pair may be found from either side.
    swap = codes[i] > codes[j]
    i, j = np.where(swap, j, i), np.where(swap, i, j)
    keep = codes[i] != codes[j]
    i, j = i[keep], j[keep]
    if not len(i):
        return []
    cos = np.einsum("ij,ij->i", vectors[i].astype(np.float64), vectors[j].astype(np.float64))
    keep = cos >= min_cosine
    i, j, cos = i[keep], j[keep], cos[keep]
    # Best pair per coin pair: highest cosine, then the lowest rows (deterministic whichever side found it).
    order = np.lexsort((j, i, -cos, codes[j], codes[i]))
    i, j, cos = i[order], j[order], cos[order]
    first = np.ones(len(i), dtype=bool)
    first[1:] = (codes[i][1:] != codes[i][:-1]) | (codes[j][1:] != codes[j][:-1])
    i, j, cos = i[first], j[first], cos[first]
    names = np.asarray(coins, dtype=str)
    out = sorted(zip(i.tolist(), j.tolist(), cos.tolist(), strict=True),
                 key=lambda t: (-t[2], names[t[0]], names[t[1]]))
    return [(a, b, float(c)) for a, b, c in out]


class IndexRegistry:
    """Holds the current snapshot per catalog; readers get a reference, writers swap a new one in."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._build_locks: dict[str, threading.Lock] = {}
        self._indexes: dict[str, CatalogIndex] = {}

    def peek(self, catalog_id: str) -> CatalogIndex | None:
        with self._lock:
            return self._indexes.get(catalog_id)

    def swap(self, catalog_id: str, index: CatalogIndex) -> None:
        with self._lock:
            current = self._indexes.get(catalog_id)
            # Never replace a newer snapshot with an older one (two builders racing).
            if current is None or index.generation >= current.generation:
                self._indexes[catalog_id] = index

    def drop(self, catalog_id: str) -> None:
        with self._lock:
            self._indexes.pop(catalog_id, None)

    def build_lock(self, catalog_id: str) -> threading.Lock:
        with self._lock:
            return self._build_locks.setdefault(catalog_id, threading.Lock())
