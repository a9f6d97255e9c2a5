"""Faiss catalog index: exact search equals brute force, incremental snapshots equal rebuilds, duplicates, the
approximate (IVF) index and when it is chosen. GPU tests: ``test_index_gpu.py``."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from coinvision.sdk.errors import ConfigError
from coinvision.sync_server.config import ServerConfig
from coinvision.sync_server.index import CatalogIndex, IndexOptions, IndexRegistry, near_duplicate_pairs


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


# ---------------------------------------------------------------------------------------- near-duplicate scan
def _brute_duplicates(v: np.ndarray, coins: list[str], ids: np.ndarray, t: float
                      ) -> list[tuple[str, str, float, int, int]]:
    """Every pair of different coins at float64 cosine >= t; per coin pair the best (then lowest rows) pair."""
    g = v.astype(np.float64) @ v.astype(np.float64).T
    best: dict[tuple[str, str], tuple[float, int, int]] = {}
    for i, j in zip(*np.nonzero(g >= t), strict=True):  # row-major: lowest (i, j) first among equal cosines
        a, b = coins[i], coins[j]
        if a < b and ((a, b) not in best or g[i, j] > best[(a, b)][0]):
            best[(a, b)] = (float(g[i, j]), int(i), int(j))
    out = [(a, b, s, int(ids[i]), int(ids[j])) for (a, b), (s, i, j) in best.items()]
    return sorted(out, key=lambda r: (-r[2], r[0], r[1]))


def _planted(rng: np.random.Generator, n: int, n_coins: int, n_dupes: int, noise: float = 0.01
             ) -> tuple[np.ndarray, list[str]]:
    """Random references of ``n_coins`` coins, ``n_dupes`` of them replaced by near-copies of another coin's."""
    v = _unit(rng, n)
    coins = [f"c{i % n_coins:05d}" for i in range(n)]
    src = rng.choice(n, 2 * n_dupes, replace=False)
    for a, b in zip(src[:n_dupes], src[n_dupes:], strict=True):
        v[b] = v[a] + noise * rng.standard_normal(v.shape[1]).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True), coins


def _as_rows(pairs: list) -> list[tuple[str, str, float, int, int]]:
    return [(p.coin_a, p.coin_b, p.cosine, p.image_a, p.image_b) for p in pairs]


@pytest.mark.parametrize("scan", ["exact", "ivf"])
def test_near_duplicates_equal_brute_force_on_random_data(scan: str) -> None:
    rng = np.random.default_rng(10)
    v, coins = _planted(rng, 1500, 400, 60)
    # some duplicates inside one coin (never reported) and a triple across three coins
    v[1] = v[401] = v[801] = v[1]
    ids = np.arange(len(v)) * 3 + 7
    opts = IndexOptions(kind="flat", scan_exact_max_vectors=10**9 if scan == "exact" else 0)
    index = CatalogIndex(64, ids, v, coins, use_gpu=False, options=opts)
    for t in (0.97, 0.99):
        got = _as_rows(index.near_duplicates(t))
        want = _brute_duplicates(v, coins, ids, t)
        assert [g[:2] + g[3:] for g in got] == [w[:2] + w[3:] for w in want]
        np.testing.assert_allclose([g[2] for g in got], [w[2] for w in want], rtol=0, atol=1e-12)
    assert len(_as_rows(index.near_duplicates(0.97))) >= 55


def test_near_duplicates_threshold_is_inclusive() -> None:
    # cosine exactly 0.5 (in float32 and float64): found at min_cosine 0.5, not at the next float above it
    v = np.zeros((3, 64), np.float32)
    v[0, 0] = 1.0
    v[1, 0], v[1, 1] = 0.5, np.sqrt(np.float32(0.75))
    v[2, 2] = 1.0
    index = CatalogIndex(64, np.array([10, 11, 12]), v, ["a", "b", "c"], use_gpu=False)
    pairs = index.near_duplicates(0.5)
    assert [(p.coin_a, p.coin_b, p.cosine) for p in pairs] == [("a", "b", 0.5)]
    assert index.near_duplicates(float(np.nextafter(0.5, 1.0))) == []


def test_near_duplicate_scan_asks_more_neighbours_when_one_coin_crowds_them() -> None:
    rng = np.random.default_rng(11)
    base = _unit(rng, 1)[0]
    crowd = base + 0.001 * rng.standard_normal((300, 64)).astype(np.float32)  # coin a: 300 near-identical refs
    v = np.vstack([crowd, base + 0.002 * rng.standard_normal((1, 64)).astype(np.float32), _unit(rng, 20)])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    coins = np.asarray(["a"] * 300 + ["b"] + [f"x{i:02d}" for i in range(20)])
    calls: list[int] = []
    flat = CatalogIndex(64, np.arange(len(v)), v, list(coins), use_gpu=False).index

    def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append(k)
        return flat.search(q, k)

    # k grows 4 -> 16 -> 64, then rows still saturated at k_max=64 are finished by an exact scan
    pairs = near_duplicate_pairs(v, coins, 0.99, search, k_max=64, k=4)
    assert calls == [4, 16, 64]
    assert [(coins[i], coins[j]) for i, j, _ in pairs] == [("a", "b")]
    want = _brute_duplicates(v, list(coins), np.arange(len(v)), 0.99)
    assert [(int(i), int(j)) for i, j, _ in pairs] == [(w[3], w[4]) for w in want]


# ---------------------------------------------------------------------------------------- approximate index
def _clustered(rng: np.random.Generator, n_coins: int, refs: int, spread: float = 0.04) -> tuple[np.ndarray, list[str]]:
    """``refs`` photos per coin around its centre; coins in look-alike groups of 10 (denominations of a series)."""
    groups = _unit(rng, max(1, n_coins // 10))
    centres = groups[np.arange(n_coins) // 10] + 0.08 * rng.standard_normal((n_coins, 64)).astype(np.float32)
    v = np.repeat(centres, refs, axis=0) + spread * rng.standard_normal((n_coins * refs, 64)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True), [f"k{i // refs:05d}" for i in range(n_coins * refs)]


def test_index_kind_follows_the_size_threshold_and_the_explicit_option() -> None:
    rng = np.random.default_rng(12)
    v, coins = _clustered(rng, 300, 10)  # 3000 references
    auto = IndexOptions(kind="auto", approx_min_vectors=2000)
    small = CatalogIndex(64, np.arange(1500), v[:1500], coins[:1500], use_gpu=False, options=auto)
    assert small.kind == "flat"
    grown = small.with_added(np.arange(1500, 3000), v[1500:], coins[1500:], generation=1)
    assert grown.kind == "ivf" and len(grown) == 3000
    assert grown.without(list(range(1000, 3000)), generation=2).kind == "flat"
    assert CatalogIndex(64, np.arange(3000), v, coins, use_gpu=False, options=IndexOptions(kind="flat")).kind == "flat"
    forced = CatalogIndex(64, np.arange(300), v[:300], coins[:300], use_gpu=False, options=IndexOptions(kind="ivf"))
    assert forced.kind == "ivf"
    with pytest.raises(ConfigError, match="index kind 'hnsw'"):
        IndexOptions(kind="hnsw")
    with pytest.raises(ConfigError, match="index_kind='hnsw'"):
        ServerConfig.resolve(data_dir="/tmp/unused-coinvision", index_kind="hnsw")


def test_ivf_scanning_every_cell_equals_exact_after_adds_and_removals() -> None:
    rng = np.random.default_rng(13)
    v, coins = _clustered(rng, 200, 8)
    ids = np.arange(len(v)) * 2 + 100  # faiss labels of an IVF are these ids, not positions
    every_cell = IndexOptions(kind="ivf", nprobe=10_000)
    ivf = CatalogIndex(64, ids[:1200], v[:1200], coins[:1200], use_gpu=False, options=every_cell)
    ivf = ivf.with_added(ids[1200:], v[1200:], coins[1200:], generation=1).without(list(ids[::7]), generation=2)
    assert ivf.kind == "ivf"
    keep = ~np.isin(ids, ids[::7])
    exact = CatalogIndex(64, ids[keep], v[keep], list(np.asarray(coins)[keep]), use_gpu=False)
    q = _unit(rng, 40)
    got, want = ivf.search(q, 5), exact.search(q, 5)
    assert [[(c, i) for c, _, i in r] for r in got] == [[(c, i) for c, _, i in r] for r in want]


def test_ivf_recall_against_exact_search_stays_above_the_floor() -> None:
    # Recall floor at the default nprobe; benchmarks/bench_search.py measures it on real embeddings.
    rng = np.random.default_rng(14)
    v, coins = _clustered(rng, 2000, 10)  # 20k references, 200 look-alike groups
    ivf = CatalogIndex(64, np.arange(len(v)), v, coins, use_gpu=False, options=IndexOptions(kind="ivf"))
    exact = CatalogIndex(64, np.arange(len(v)), v, coins, use_gpu=False)
    picks = rng.choice(len(v), 300, replace=False)
    q = v[picks] + 0.03 * rng.standard_normal((300, 64)).astype(np.float32)  # new photos of catalogued coins
    got, want = ivf.search(q, 5), exact.search(q, 5)
    r1 = np.mean([g[0][0] == w[0][0] for g, w in zip(got, want, strict=True)])
    r5 = np.mean([len({c for c, _, _ in g} & {c for c, _, _ in w}) / 5 for g, w in zip(got, want, strict=True)])
    assert r1 >= 0.97 and r5 >= 0.95, (r1, r5)


def test_gpu_request_without_a_gpu_falls_back_to_cpu_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    from coinvision.sync_server.index import gpu_available

    if gpu_available():
        pytest.skip("a GPU is visible: the fallback is what this test checks")
    rng = np.random.default_rng(15)
    v = _unit(rng, 50)
    with caplog.at_level(logging.WARNING, logger="coinvision.sync_server.index"):
        index = CatalogIndex(64, np.arange(50), v, [f"c{i}" for i in range(50)], use_gpu=True)
    assert not index.use_gpu and index.kind == "flat"
    assert "stays on the CPU" in caplog.text
    assert index.search(v[3], 1)[0][0][0] == "c3"


@pytest.mark.slow
def test_ivf_search_survives_faiss_torch_utils() -> None:
    """pytorch-metric-learning imports faiss.contrib.torch_utils, which swaps ``Index.search`` for a wrapper
    without ``params``: a process that also trains or evaluates must still search and scan its IVF indexes."""
    import faiss.contrib.torch_utils  # noqa: F401  (the patch is the point)

    rng = np.random.default_rng(21)
    v, coins = _clustered(rng, 60, 8)
    every_cell = IndexOptions(kind="ivf", nprobe=10_000, scan_exact_max_vectors=0)
    ivf = CatalogIndex(64, np.arange(len(v)), v, coins, use_gpu=False, options=every_cell)
    exact = CatalogIndex(64, np.arange(len(v)), v, coins, use_gpu=False)
    q = _unit(rng, 10)
    def coins_of(index: CatalogIndex) -> list[list[str]]:
        return [[c for c, _, _ in row] for row in index.search(q, 3)]

    assert coins_of(ivf) == coins_of(exact)
    assert ivf.near_duplicates(0.99) == exact.near_duplicates(0.99)
