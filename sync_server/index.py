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


def _to_device(index: faiss.Index, use_gpu: bool) -> faiss.Index:
    global _gpu_resources
    if not use_gpu:
        return index
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
        if not len(self.ids):
            return [[] for _ in range(len(q))]
        k = min(len(self.ids), max(top_k * 8, top_k))
        scores, pos = self.index.search(q, k)
        out: list[list[tuple[str, float, int]]] = []
        for row_scores, row_pos in zip(scores, pos, strict=True):
            seen: dict[str, tuple[float, int]] = {}
            for s, p in zip(row_scores, row_pos, strict=True):
                if p < 0:
                    continue
                coin = str(self.coin_ids[p])
                if coin not in seen:
                    seen[coin] = (float(s), int(self.ids[p]))
                    if len(seen) == top_k:
                        break
            out.append([(c, s, i) for c, (s, i) in seen.items()])
        return out

    def near_duplicates(self, min_cosine: float, neighbours: int = 16) -> list[DuplicatePair]:
        """Pairs of different coins with references at cosine >= ``min_cosine`` (best pair per coin pair)."""
        n = len(self.ids)
        if n < 2:
            return []
        scores, pos = self.index.search(self.vectors, min(n, neighbours + 1))
        best: dict[tuple[str, str], DuplicatePair] = {}
        for i in range(n):
            for s, p in zip(scores[i], pos[i], strict=True):
                if p < 0 or s < min_cosine:
                    continue
                a, b = str(self.coin_ids[i]), str(self.coin_ids[p])
                if a == b:
                    continue
                key = (a, b) if a < b else (b, a)
                ia, ib = (int(self.ids[i]), int(self.ids[p])) if a < b else (int(self.ids[p]), int(self.ids[i]))
                if key not in best or s > best[key].cosine:
                    best[key] = DuplicatePair(key[0], key[1], float(s), ia, ib)
        return sorted(best.values(), key=lambda d: -d.cosine)


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
