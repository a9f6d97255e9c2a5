"""Per-catalog Faiss indexes: exact inner product (= cosine on unit vectors), GPU when there is one.

An index is an immutable snapshot. Writers build the next snapshot aside (a clone plus the change, or a full
rebuild) and swap the registry's reference under a lock, so a search never sees a half-updated index and
never waits for a build.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

__all__ = ["CatalogIndex", "DuplicatePair", "IndexRegistry", "gpu_available"]

log = logging.getLogger(__name__)


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_gpu_resources: object | None = None
# StandardGpuResources is not thread-safe (one stream, one scratch area): the threaded server serialises every
# GPU call through this lock. CPU indexes are searched concurrently without it.
_gpu_lock = threading.Lock()


def _to_device(index: faiss.Index, use_gpu: bool) -> faiss.Index:
    global _gpu_resources
    if not use_gpu:
        return index
    with _gpu_lock:
        if _gpu_resources is None:
            _gpu_resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(_gpu_resources, 0, index)


@dataclass(frozen=True)
class DuplicatePair:
    coin_a: str
    coin_b: str
    cosine: float
    image_a: int
    image_b: int


class CatalogIndex:
    """Snapshot of one catalog's reference embeddings. ``ids`` are ReferenceImage ids (int64)."""

    def __init__(
        self,
        dim: int,
        ids: np.ndarray,
        vectors: np.ndarray,
        coin_ids: Sequence[str],
        *,
        generation: int = 0,
        use_gpu: bool | None = None,
    ) -> None:
        self.dim = dim
        self.ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
        if len(self.ids) != len(self.vectors) or len(coin_ids) != len(self.ids):
            raise ValueError("ids, vectors and coin_ids must have one entry per reference")
        self.coin_ids = np.asarray(list(coin_ids), dtype=object)
        self.generation = generation
        self.use_gpu = gpu_available() if use_gpu is None else use_gpu
        # Positions, not database ids, go into faiss: the flat index stays a plain (GPU-capable) IndexFlatIP.
        flat = faiss.IndexFlatIP(dim)
        if len(self.vectors):
            flat.add(self.vectors)
        self.index = _to_device(flat, self.use_gpu)

    def __len__(self) -> int:
        return len(self.ids)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.use_gpu:
            with _gpu_lock:
                return self.index.search(queries, k)
        return self.index.search(queries, k)

    def with_added(
        self, ids: np.ndarray, vectors: np.ndarray, coin_ids: Sequence[str], generation: int
    ) -> CatalogIndex:
        """A new snapshot with these references added (the flat index is extended, not rebuilt on CPU)."""
        if not len(self.ids):
            vectors = np.asarray(vectors, dtype=np.float32)
            return CatalogIndex(vectors.shape[-1], ids, vectors, coin_ids, generation=generation, use_gpu=self.use_gpu)
        new = CatalogIndex.__new__(CatalogIndex)
        new.dim, new.generation, new.use_gpu = self.dim, generation, self.use_gpu
        add = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        new.ids = np.concatenate([self.ids, np.asarray(ids, dtype=np.int64).reshape(-1)])
        new.vectors = np.concatenate([self.vectors, add])
        new.coin_ids = np.concatenate([self.coin_ids, np.asarray(list(coin_ids), dtype=object)])
        if self.use_gpu:
            flat = faiss.IndexFlatIP(self.dim)
            flat.add(new.vectors)
            new.index = _to_device(flat, True)
        else:
            new.index = faiss.clone_index(self.index)
            new.index.add(add)
        return new

    def without(self, remove_ids: Sequence[int], generation: int) -> CatalogIndex:
        keep = ~np.isin(self.ids, np.asarray(list(remove_ids), dtype=np.int64))
        return CatalogIndex(
            self.dim, self.ids[keep], self.vectors[keep], list(self.coin_ids[keep]),
            generation=generation, use_gpu=self.use_gpu,
        )

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
        # faiss GPU k-selection stops at 2048 neighbours.
        k_max = min(n, 2048) if self.use_gpu else n
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

    def near_duplicates(self, min_cosine: float) -> list[DuplicatePair]:
        """Pairs of different coins with references at cosine >= ``min_cosine`` (best pair per coin pair).

        A range search, not k-NN: a coin with many near-identical references cannot hide another coin's
        look-alike behind them. Runs on a CPU flat index (faiss GPU indexes have no range search).
        """
        n = len(self.ids)
        if n < 2:
            return []
        cpu = self.index if not self.use_gpu else faiss.IndexFlatIP(self.dim)
        if self.use_gpu:
            cpu.add(self.vectors)
        # range_search keeps scores strictly above the radius; nextafter makes the threshold inclusive.
        lims, scores, pos = cpu.range_search(self.vectors, float(np.nextafter(np.float32(min_cosine), -np.inf)))
        best: dict[tuple[str, str], DuplicatePair] = {}
        for i in range(n):
            a = str(self.coin_ids[i])
            for s, p in zip(scores[lims[i] : lims[i + 1]], pos[lims[i] : lims[i + 1]], strict=True):
                b = str(self.coin_ids[p])
                if a >= b:  # same coin, or the pair is seen again from b's side
                    continue
                if (a, b) not in best or s > best[(a, b)].cosine:
                    best[(a, b)] = DuplicatePair(a, b, float(s), int(self.ids[i]), int(self.ids[p]))
        return sorted(best.values(), key=lambda d: (-d.cosine, d.coin_a, d.coin_b))


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
