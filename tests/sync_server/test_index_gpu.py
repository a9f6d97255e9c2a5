"""The catalog index on a GPU (``pytest -m gpu``; needs the ``gpu`` extra — faiss-gpu instead of faiss-cpu — and a
CUDA device): the GPU flat index answers exactly what the CPU one does, and its shared ``StandardGpuResources``
survive concurrent requests. Without a GPU every test here skips and says why."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from coinvision.sync_server.index import CatalogIndex, IndexOptions, gpu_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="faiss has no GPU support (install the 'gpu' extra: faiss-gpu "
                       "instead of faiss-cpu) or sees no CUDA device"),
]


def _unit(rng: np.random.Generator, n: int, dim: int = 64) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _catalog(seed: int, n: int = 5000, n_coins: int = 900) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    v = _unit(rng, n)
    dup = rng.choice(n, 80, replace=False)  # near-copies across coins, for the duplicate scan
    v[dup[40:]] = v[dup[:40]] + 0.01 * rng.standard_normal((40, v.shape[1])).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return np.arange(n, dtype=np.int64) * 3 + 1, v, [f"c{i % n_coins:04d}" for i in range(n)]


def test_gpu_flat_index_gives_the_cpu_results() -> None:
    ids, v, coins = _catalog(5)
    cpu = CatalogIndex(64, ids, v, coins, use_gpu=False)
    gpu = CatalogIndex(64, ids, v, coins, use_gpu=True)
    assert gpu.use_gpu and gpu.kind == "flat" and not cpu.use_gpu
    q = _unit(np.random.default_rng(6), 64)
    for top_k in (1, 10, 50):
        want, got = cpu.search(q, top_k), gpu.search(q, top_k)
        assert [[(c, i) for c, _, i in r] for r in got] == [[(c, i) for c, _, i in r] for r in want]
        np.testing.assert_allclose([[s for _, s, _ in r] for r in got], [[s for _, s, _ in r] for r in want],
                                   atol=1e-5)
    # the near-duplicate scan: exact k-NN on the GPU, float64 re-scoring: the same pairs and cosines
    assert gpu.near_duplicates(0.97) == cpu.near_duplicates(0.97) != []


def test_gpu_snapshots_added_and_removed_match_cpu_and_auto_picks_the_gpu() -> None:
    ids, v, coins = _catalog(7)
    auto = CatalogIndex(64, ids[:3000], v[:3000], coins[:3000], options=IndexOptions(kind="auto",
                                                                                       approx_min_vectors=1000))
    assert auto.use_gpu and auto.kind == "flat"  # with a GPU, "auto" stays exact whatever the size
    grown = auto.with_added(ids[3000:], v[3000:], coins[3000:], generation=1).without(list(ids[::5]), generation=2)
    keep = ~np.isin(ids, ids[::5])
    cpu = CatalogIndex(64, ids[keep], v[keep], list(np.asarray(coins)[keep]), use_gpu=False)
    q = _unit(np.random.default_rng(8), 32)
    assert grown.use_gpu
    assert [[(c, i) for c, _, i in r] for r in grown.search(q, 10)] == [[(c, i) for c, _, i in r]
                                                                         for r in cpu.search(q, 10)]


def test_gpu_resources_serve_concurrent_searches_and_builds() -> None:
    # One StandardGpuResources serves every GPU index: 8 threads search while 2 others build new GPU snapshots
    # (index_cpu_to_gpu) and drop old ones (freeing GPU memory); every answer must equal the CPU reference.
    ids, v, coins = _catalog(9)
    gpu = CatalogIndex(64, ids, v, coins, use_gpu=True)
    cpu = CatalogIndex(64, ids, v, coins, use_gpu=False)
    queries = [_unit(np.random.default_rng(100 + t), 16) for t in range(8)]
    want = [[[(c, i) for c, _, i in r] for r in cpu.search(q, 10)] for q in queries]
    start = threading.Barrier(10)

    def searcher(t: int) -> bool:
        start.wait()
        return all([[(c, i) for c, _, i in r] for r in gpu.search(queries[t], 10)] == want[t] for _ in range(30))

    def builder(t: int) -> int:
        start.wait()
        built = 0
        for g in range(10):
            snap = CatalogIndex(64, ids, v, coins, generation=g, use_gpu=True)
            built += snap.use_gpu and snap.search(v[t], 1)[0][0][0] == coins[t]
            del snap  # frees its GPU memory through the shared resources, under the lock
        return built

    with ThreadPoolExecutor(10) as pool:
        searches = [pool.submit(searcher, t) for t in range(8)]
        builds = [pool.submit(builder, t) for t in range(2)]
        assert all(f.result(timeout=300) for f in searches)
        assert [f.result(timeout=300) for f in builds] == [10, 10]
