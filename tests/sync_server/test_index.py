"""Faiss catalog index: exact search equals brute force, incremental snapshots equal rebuilds, duplicates."""

from __future__ import annotations

import numpy as np
import pytest
from coinvision.sync_server.index import CatalogIndex, IndexRegistry, gpu_available


def _unit(rng: np.random.Generator, n: int, dim: int = 64) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _brute(vectors: np.ndarray, coins: list[str], query: np.ndarray, k: int) -> list[tuple[str, float]]:
    scores = vectors @ query
    best: dict[str, float] = {}
    for c, s in zip(coins, scores, strict=True):
        best[c] = max(best.get(c, -2.0), float(s))
    return sorted(best.items(), key=lambda kv: -kv[1])[:k]


def test_catalog_index_search_matches_brute_force_max_over_references() -> None:
    rng = np.random.default_rng(0)
    vectors = _unit(rng, 300)
    coins = [f"c{i % 70}" for i in range(300)]
    index = CatalogIndex(64, np.arange(300) + 1000, vectors, coins, use_gpu=False)
    for q in _unit(rng, 5):
        got = index.search(q, 5)[0]
        want = _brute(vectors, coins, q, 5)
        assert [g[0] for g in got] == [w[0] for w in want]
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=1e-5)
        # the reported reference id holds the winning vector
        for coin, score, ref in got:
            row = int(ref) - 1000
            assert coins[row] == coin and abs(float(vectors[row] @ q) - score) < 1e-5


def test_catalog_index_incremental_add_and_remove_equal_rebuild() -> None:
    rng = np.random.default_rng(1)
    a, b = _unit(rng, 50), _unit(rng, 20)
    coins_a, coins_b = [f"a{i % 10}" for i in range(50)], [f"b{i % 4}" for i in range(20)]
    base = CatalogIndex(64, np.arange(50), a, coins_a, generation=1, use_gpu=False)
    grown = base.with_added(np.arange(50, 70), b, coins_b, generation=2)
    rebuilt = CatalogIndex(64, np.arange(70), np.vstack([a, b]), coins_a + coins_b, use_gpu=False)
    q = _unit(rng, 8)
    assert grown.search(q, 6) == rebuilt.search(q, 6)
    assert len(base) == 50 and grown.generation == 2  # the old snapshot is untouched (readers keep using it)
    shrunk = grown.without(list(range(50, 70)), generation=3)
    assert shrunk.search(q, 6) == base.search(q, 6)


def test_catalog_index_empty_then_added() -> None:
    rng = np.random.default_rng(2)
    empty = CatalogIndex(1, np.zeros(0), np.zeros((0, 1)), [], use_gpu=False)
    assert empty.search(np.ones(1), 3) == [[]]
    grown = empty.with_added(np.array([7]), _unit(rng, 1), ["x"], generation=1)
    assert grown.dim == 64 and grown.search(grown.vectors[0], 3)[0][0][:1] == ("x",)


def test_catalog_index_near_duplicates_flags_only_different_coins() -> None:
    rng = np.random.default_rng(3)
    v = _unit(rng, 6)
    v[1] = v[0] + 0.01 * _unit(rng, 1)[0]  # same coin, near-identical: not a conflict
    v[3] = v[2] + 0.01 * _unit(rng, 1)[0]  # different coins, near-identical: conflict
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    index = CatalogIndex(64, np.arange(6) + 10, v, ["a", "a", "b", "c", "d", "e"], use_gpu=False)
    pairs = index.near_duplicates(0.95)
    assert [(p.coin_a, p.coin_b) for p in pairs] == [("b", "c")]
    assert pairs[0].cosine > 0.95 and {pairs[0].image_a, pairs[0].image_b} == {12, 13}


def test_search_returns_top_k_coins_when_one_coin_has_many_references() -> None:
    rng = np.random.default_rng(6)
    q = _unit(rng, 1)[0]
    crowd = q + 0.05 * _unit(rng, 100)  # 100 references of one coin, all nearer to q than anything else
    others = _unit(rng, 30)
    vectors = np.vstack([crowd / np.linalg.norm(crowd, axis=1, keepdims=True), others])
    coins = ["crowd"] * 100 + [f"o{i}" for i in range(30)]
    got = CatalogIndex(64, np.arange(130), vectors, coins, use_gpu=False).search(q, 5)[0]
    want = _brute(vectors, coins, q, 5)
    assert [g[0] for g in got] == [w[0] for w in want] and got[0][0] == "crowd" and len(got) == 5


def test_near_duplicates_not_hidden_by_many_references_of_one_coin() -> None:
    rng = np.random.default_rng(7)
    base = _unit(rng, 1)[0]
    same = base + 0.001 * _unit(rng, 40)  # coin a: 40 near-identical references
    twin = base + 0.002 * _unit(rng, 1)  # coin b: one reference that looks like coin a
    v = np.vstack([same, twin, _unit(rng, 5)])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    coins = ["a"] * 40 + ["b"] + [f"x{i}" for i in range(5)]
    pairs = CatalogIndex(64, np.arange(46), v, coins, use_gpu=False).near_duplicates(0.99)
    assert [(p.coin_a, p.coin_b) for p in pairs] == [("a", "b")] and pairs[0].image_b == 40


def test_index_registry_never_swaps_in_an_older_generation() -> None:
    rng = np.random.default_rng(4)
    reg = IndexRegistry()
    new = CatalogIndex(64, np.arange(2), _unit(rng, 2), ["a", "b"], generation=5, use_gpu=False)
    old = CatalogIndex(64, np.arange(1), _unit(rng, 1), ["a"], generation=4, use_gpu=False)
    reg.swap("cat", new)
    reg.swap("cat", old)
    assert reg.peek("cat") is new


@pytest.mark.gpu
def test_catalog_index_gpu_gives_cpu_results() -> None:
    if not gpu_available():
        pytest.skip("faiss has no GPU support or no GPU is visible")
    rng = np.random.default_rng(5)
    v, coins = _unit(rng, 500), [f"c{i % 90}" for i in range(500)]
    q = _unit(rng, 10)
    cpu = CatalogIndex(64, np.arange(500), v, coins, use_gpu=False).search(q, 10)
    gpu = CatalogIndex(64, np.arange(500), v, coins, use_gpu=True).search(q, 10)
    assert [[h[0] for h in r] for r in cpu] == [[h[0] for h in r] for r in gpu]
