"""The catalog embedding pack: byte layout, quantization, search vs faiss, deltas, strict parsing, golden vectors."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from coinvision.sdk import pack as packlib
from coinvision.sdk.errors import (
    DatasetError,
    PackBuildError,
    PackChecksumError,
    PackDeltaError,
    PackDimError,
    PackError,
    PackFingerprintError,
    PackFormatError,
    PackIOError,
    PackMagicError,
    PackQueryError,
    PackTruncatedError,
    PackVersionError,
)
from coinvision.sdk.pack import CoinRecord

from tests.golden.packs.regenerate import HERE as GOLDEN_DIR
from tests.golden.packs.regenerate import golden, reference_ivfpq_search, reference_search

FP = "fp-test-0001"


def _random_catalog(
    rng: np.random.Generator, n_coins: int, dim: int = 64, max_per_coin: int = 4
) -> tuple[np.ndarray, list[str], list[CoinRecord]]:
    counts = rng.integers(1, max_per_coin + 1, size=n_coins)
    ids = [f"coin-{i:05d}" for i in range(n_coins)]
    vector_ids = [cid for cid, n in zip(ids, counts, strict=True) for _ in range(n)]
    order = rng.permutation(len(vector_ids))  # builders may hand vectors in any order
    vector_ids = [vector_ids[i] for i in order]
    vectors = rng.standard_normal((len(vector_ids), dim)).astype(np.float32)
    records = [CoinRecord(cid, label=f"Coin {i}", country="Österreich" if i % 2 else "日本", years="1999",
                          extra={"k": str(i)} if i % 3 == 0 else {}) for i, cid in enumerate(ids)]
    return vectors, vector_ids, records


def _build(vectors: np.ndarray, ids: list[str], records: list[CoinRecord], quant: str = "int8", version: int = 1,
           fp: str = FP, created_at: int = 1_700_000_000, catalog_id: str = "cat") -> bytes:
    return packlib.build_pack(vectors, ids, records, catalog_id=catalog_id, catalog_version=version,
                              model_fingerprint=fp, quant=quant, created_at=created_at)


def _reseal(data: bytes | bytearray) -> bytes:
    return bytes(data[:-32]) + hashlib.sha256(bytes(data[:-32])).digest()


@pytest.fixture(scope="module")
def catalog() -> tuple[np.ndarray, list[str], list[CoinRecord]]:
    return _random_catalog(np.random.default_rng(0), n_coins=300)


# ------------------------------------------------------------------------------------------------ format


@pytest.mark.parametrize("quant", packlib.QUANTS)
def test_pack_roundtrip_is_byte_exact_and_keeps_every_field(catalog, quant: str) -> None:
    vectors, ids, records = catalog
    data = _build(vectors, ids, records, quant, version=7, created_at=1_234_567_890)
    p = packlib.read_pack(data)
    assert p.to_bytes() == data
    assert (p.catalog_id, p.catalog_version, p.created_at, p.model_fingerprint) == ("cat", 7, 1_234_567_890, FP)
    assert (p.dim, p.quant, p.metric, p.vector_count, p.coin_count) == (64, quant, "cosine", len(ids), 300)
    assert sorted(p.coin_ids) == sorted(ids)
    assert p.coin_ids == sorted(p.coin_ids)  # stored grouped by coin, coins in id order
    assert dict(p.records) == {r.coin_id: r for r in records}
    # Every stored vector is (the quantised form of) one of the coin's input vectors.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    deq = p.vectors_f32()
    for cid in ("coin-00000", "coin-00123", "coin-00299"):
        want = unit[[i for i, c in enumerate(ids) if c == cid]]
        got = deq[[i for i, c in enumerate(p.coin_ids) if c == cid]]
        np.testing.assert_allclose(got, want, atol={"int8": 5e-3, "fp16": 1e-3, "fp32": 1e-7}[quant])


@pytest.mark.parametrize("quant", packlib.QUANTS)
def test_pack_from_vectors_is_the_pack_build_pack_writes(catalog, quant: str) -> None:
    vectors, ids, records = catalog
    built = packlib.Pack.from_vectors(vectors, ids, records, catalog_id="cat", catalog_version=3,
                                      model_fingerprint=FP, quant=quant, created_at=1_700_000_000)
    data = _build(vectors, ids, records, quant, version=3)
    assert built.to_bytes() == data and built == packlib.read_pack(data)
    assert built.sha256 == hashlib.sha256(data).hexdigest()
    assert built.to_bytes() is built.to_bytes()  # kept, not re-encoded: callers write and hash the same bytes


def test_pack_keeps_vector_order_within_a_coin() -> None:
    vecs = np.eye(4, dtype=np.float32)
    p = packlib.read_pack(_build(vecs, ["b", "a", "b", "a"], [], "fp32"))
    assert p.coin_ids == ["a", "a", "b", "b"]
    np.testing.assert_array_equal(p.vectors_f32(), vecs[[1, 3, 0, 2]])


@pytest.mark.parametrize(("quant", "per_vector"), [("int8", 72), ("fp16", 132), ("fp32", 260)])
def test_pack_bytes_per_vector_at_dim_64(catalog, quant: str, per_vector: int) -> None:
    vectors, ids, records = catalog
    data = _build(vectors, ids, records, quant)
    p = packlib.read_pack(data)
    assert p.vector_bytes == per_vector * len(ids)
    table = len(data) - 64 - 32 - p.vector_bytes
    assert table == len(p._table())
    if quant == "int8":
        assert p.vector_bytes / len(ids) <= 80  # the budget: 64-d int8 vector incl. its coin id


def test_pack_build_is_deterministic_whatever_the_input_order(catalog) -> None:
    vectors, ids, records = catalog
    a = _build(vectors, ids, records)
    assert _build(vectors, ids, records) == a
    # Coins handed in another order (vectors of one coin keep their relative order) give the same bytes.
    perm = sorted(range(len(ids)), key=lambda i: ids[i][::-1])  # stable: a coin's vectors keep their order
    assert _build(vectors[perm], [ids[i] for i in perm], records[::-1]) == a


def test_pack_int8_quantization_follows_the_documented_formula() -> None:
    rng = np.random.default_rng(1)
    v = rng.standard_normal((50, 64))
    p = packlib.read_pack(_build(v, [f"c{i:02d}" for i in range(50)], [], "int8"))
    unit = v / np.sqrt(np.sum(v * v, axis=1, keepdims=True))
    scale = (np.max(np.abs(unit), axis=1) / 127).astype(np.float32)
    codes = np.clip(np.rint(unit / scale.astype(np.float64)[:, None]), -127, 127)
    np.testing.assert_array_equal(p._scales, scale)
    np.testing.assert_array_equal(p._data, codes.astype(np.int8))
    assert np.abs(p._data).max(axis=1).min() == 127  # the largest component uses the full range
    err = np.abs(p.vectors_f32() - unit)
    assert np.all(err <= scale[:, None] / 2 + 1e-7)
    cos = np.sum(p.vectors_f32() * unit, axis=1) / np.linalg.norm(p.vectors_f32(), axis=1)
    assert cos.min() > 0.999


def test_pack_empty_catalog_is_valid_and_searches_to_nothing() -> None:
    p = packlib.read_pack(_build(np.zeros((0, 16)), [], []))
    assert (p.vector_count, p.coin_count, p.dim) == (0, 0, 16)
    assert p.search(np.ones(16), 5) == []


# ------------------------------------------------------------------------------------------------ search


@pytest.mark.parametrize("quant", packlib.QUANTS)
def test_pack_search_matches_faiss_flat_ip_brute_force(catalog, quant: str) -> None:
    faiss = pytest.importorskip("faiss")
    vectors, ids, records = catalog
    p = packlib.read_pack(_build(vectors, ids, records, quant))
    deq = p.vectors_f32()
    deq /= np.linalg.norm(deq, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(p.dim)
    index.add(deq)
    rng = np.random.default_rng(2)
    queries = np.concatenate([vectors[:20] + 0.3 * rng.standard_normal((20, 64)), rng.standard_normal((20, 64))])
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    sims, idx = index.search(queries, p.vector_count)  # every vector, ranked: the exact reference
    vector_coins = np.array(p.coin_ids)
    k = 10
    results = p.search_batch(queries, k)
    for q in range(len(queries)):
        best: dict[str, float] = {}
        for s, i in zip(sims[q], idx[q], strict=True):
            best.setdefault(str(vector_coins[i]), float(s))  # first hit per coin = its max
        ref = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        got = results[q]
        assert len(got) == k
        np.testing.assert_allclose([s for _, s in got], [s for _, s in ref], atol=1e-5)
        for (gid, gs), (rid, rs) in zip(got, ref, strict=True):
            assert gid == rid or abs(gs - rs) < 1e-5  # ids may swap only within float32 noise
        single = p.search(queries[q], k)  # one query vs a batch: BLAS kernels round differently in float32
        np.testing.assert_allclose([s for _, s in single], [s for _, s in got], atol=1e-6)


def test_pack_search_coin_score_is_max_over_its_vectors_and_top_k_are_coins() -> None:
    vecs = np.array([[1, 0, 0], [0, 1, 0], [0.6, 0.8, 0], [0, 0, 1]], dtype=np.float32)
    p = packlib.read_pack(_build(vecs, ["a", "a", "b", "c"], [], "fp32"))
    hits = p.search(np.array([0, 1, 0.0]), k=5)
    assert [c for c, _ in hits] == ["a", "b", "c"]  # 3 coins, not 4 vectors
    np.testing.assert_allclose([s for _, s in hits], [1.0, 0.8, 0.0], atol=1e-6)
    assert p.search(np.array([0, 1, 0.0]), k=1) == hits[:1]
    assert p.search(np.array([[0, 5, 0.0]]), k=2) == hits[:2]  # (1, dim) and unnormalised queries are fine


def test_pack_search_ties_are_broken_by_coin_id() -> None:
    vecs = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float32)
    p = packlib.read_pack(_build(vecs, ["zz", "mm", "aa", "bb"], [], "int8"))
    assert [c for c, _ in p.search(np.array([1, 1, 0.0]), k=2)] == ["aa", "mm"]
    assert [c for c, _ in p.search(np.array([1, 1, 0.0]), k=4)] == ["aa", "mm", "zz", "bb"]


@pytest.mark.parametrize("quant", ["int8", "fp16"])
def test_pack_search_rescore_gives_float64_scores_and_same_order(catalog, quant: str) -> None:
    vectors, ids, records = catalog
    p = packlib.read_pack(_build(vectors, ids, records, quant))
    deq = p.vectors_f32().astype(np.float64)
    for q in vectors[:10].astype(np.float64):
        ref = reference_search(deq, p.coin_ids, q, 5)
        got = p.search(q, 5, rescore=True)
        assert [c for c, _ in got] == [c for c, _ in ref]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in ref], atol=1e-12)
        plain = p.search(q, 5)
        np.testing.assert_allclose([s for _, s in plain], [s for _, s in ref], atol=1e-5)


def test_pack_search_rejects_bad_queries_clearly(catalog) -> None:
    vectors, ids, records = catalog
    p = packlib.read_pack(_build(vectors, ids, records))
    with pytest.raises(PackDimError, match=r"shape \(32,\).*64-d vectors of model fp-test-0001"):
        p.search(np.ones(32))
    with pytest.raises(PackDimError):
        p.search_batch(np.ones(64))
    with pytest.raises(PackQueryError, match="NaN"):
        p.search(np.full(64, np.nan))
    with pytest.raises(PackQueryError, match="all zeros"):
        p.search(np.zeros(64))
    with pytest.raises(PackQueryError, match="k="):
        p.search(np.ones(64), k=-1)
    with pytest.raises(PackQueryError, match="numeric"):
        p.search(["a"] * 64)
    assert p.search(np.ones(64), k=0) == []
    assert len(p.search(np.ones(64), k=10_000)) == 300


# ------------------------------------------------------------------------------------------------ fingerprint


def test_check_fingerprint_names_both_models(catalog) -> None:
    vectors, ids, records = catalog
    data = _build(vectors, ids, records)
    p = packlib.read_pack(data)
    packlib.check_fingerprint(p, FP)
    with pytest.raises(PackFingerprintError, match=r"model fp-test-0001.*embedder in use is other-model"):
        packlib.check_fingerprint(p, "other-model")
    with pytest.raises(PackFingerprintError):
        packlib.read_pack(data, expected_fingerprint="other-model")
    with pytest.raises(PackDimError, match="64-d vectors but the embedder outputs 128-d"):
        packlib.read_pack(data, expected_dim=128)
    assert packlib.read_pack(data, expected_fingerprint=FP, expected_dim=64) == p


# ------------------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def small_pack() -> bytes:
    vectors, ids, records = _random_catalog(np.random.default_rng(3), n_coins=5, dim=8)
    return _build(vectors, ids, records)


def test_read_pack_truncated_at_every_length_is_a_truncation_error(small_pack: bytes) -> None:
    for n in range(len(small_pack)):
        with pytest.raises(PackTruncatedError, match=r"truncated.*download it again"):
            packlib.read_pack(small_pack[:n])


def test_read_pack_names_each_kind_of_damage(small_pack: bytes) -> None:
    good = small_pack
    cases: list[tuple[bytes, type[PackError], str]] = [
        (b"GIF89a" + good[6:], PackMagicError, "not a coinvision pack"),
        (b"\x89PNG" + good[4:], PackMagicError, "magic"),
        (_reseal(good[:4] + struct.pack("<H", 9) + good[6:]), PackVersionError, "version 9, newer.*update the app"),
        (_reseal(good[:4] + struct.pack("<H", 0) + good[6:]), PackFormatError, "version 0"),
        (good + b"\0", PackFormatError, "1 trailing bytes"),
        (good[:200] + bytes([good[200] ^ 0x40]) + good[201:], PackChecksumError, "sha256.*download it again"),
        (good[:-1] + bytes([good[-1] ^ 1]), PackChecksumError, "corrupted"),
        (_reseal(good[:6] + b"\x07" + good[7:]), PackFormatError, "quantization code 7"),
        (_reseal(good[:7] + b"\x02" + good[8:]), PackFormatError, "metric code 2"),
        (_reseal(good[:8] + struct.pack("<H", 0) + good[10:]), PackFormatError, "dim 0"),
        (_reseal(good[:10] + b"\x01\x00" + good[12:]), PackFormatError, "reserved"),
    ]
    for data, error, message in cases:
        with pytest.raises(error, match=message):
            packlib.read_pack(data)


def test_read_pack_hostile_counts_allocate_nothing(small_pack: bytes) -> None:
    for offset, value in [(12, 1 << 31), (12, 0xFFFFFFFF), (16, 0xFFFFFFFF), (32, 0xFFFFFFFF), (8, 4096)]:
        data = bytearray(small_pack)
        data[offset : offset + (2 if offset == 8 else 4)] = (
            struct.pack("<H", value) if offset == 8 else struct.pack("<I", value)
        )
        tracemalloc.start()
        try:
            with pytest.raises(PackError):
                packlib.read_pack(_reseal(data))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1_000_000, (offset, value, peak)


def test_read_pack_resealed_structural_damage_is_a_format_error(small_pack: bytes) -> None:
    p = packlib.read_pack(small_pack)
    n = p.vector_count
    codes_at = 64 + 8 * n
    table_at = 64 + p.vector_bytes

    def patched(offset: int, raw: bytes) -> bytes:
        data = bytearray(small_pack)
        data[offset : offset + len(raw)] = raw
        return _reseal(data)

    cases = [
        (patched(64, struct.pack("<I", 3)), "grouped by coin"),  # coin index not starting at 0
        (patched(64 + 4 * (n - 1), struct.pack("<I", 99)), "grouped by coin"),
        (patched(64 + 4 * n, struct.pack("<f", 0.0)), "scale is zero"),
        (patched(64 + 4 * n, struct.pack("<f", float("nan"))), "scale"),
        (patched(codes_at, b"\x80"), "-128"),
        (patched(codes_at, bytes(8)), "all zeros"),
        (patched(table_at + 2, b"\xff"), "UTF-8"),  # first byte of the catalog id
        (patched(table_at, struct.pack("<H", 0xFFFF)), "runs past the end"),
        (patched(16, struct.pack("<I", p.coin_count - 1)), "unexpected bytes"),
        (patched(16, struct.pack("<I", n + 1)), "claims"),
    ]
    for data, message in cases:
        with pytest.raises(PackFormatError, match=message):
            packlib.read_pack(data)


def test_read_pack_rejects_non_canonical_tables() -> None:
    # Hand-made table bodies (valid checksum) that a writer must never produce.
    def pack_with(records_blob: bytes, coins: int) -> bytes:
        table = struct.pack("<H", 1) + b"c" + struct.pack("<H", 1) + b"f" + records_blob
        header = struct.pack("<4sHBBHHIIIqI28s", b"CVPK", 1, 1, 1, 1, 0, coins, coins, 1, 0, len(table), bytes(28))
        body = (header + struct.pack(f"<{coins}I", *range(coins)) + struct.pack(f"<{coins}f", *[0.5] * coins)
                + b"\x01" * coins + table)
        return body + hashlib.sha256(body).digest()

    def rec(cid: bytes, extra: list[tuple[bytes, bytes]] = ()) -> bytes:  # type: ignore[assignment]
        out = struct.pack("<H", len(cid)) + cid + struct.pack("<H", 0) * 6 + struct.pack("<H", len(extra))
        for k, v in extra:
            out += struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v
        return out

    assert packlib.read_pack(pack_with(rec(b"a") + rec(b"b"), 2)).coin_count == 2  # the control is valid
    with pytest.raises(PackFormatError, match="not sorted"):
        packlib.read_pack(pack_with(rec(b"b") + rec(b"a"), 2))
    with pytest.raises(PackFormatError, match="not sorted"):
        packlib.read_pack(pack_with(rec(b"a") + rec(b"a"), 2))
    with pytest.raises(PackFormatError, match="empty coin_id"):
        packlib.read_pack(pack_with(rec(b""), 1))
    with pytest.raises(PackFormatError, match="extra keys"):
        packlib.read_pack(pack_with(rec(b"a", [(b"y", b"1"), (b"x", b"2")]), 1))
    with pytest.raises(PackFormatError, match="extra keys"):
        packlib.read_pack(pack_with(rec(b"a", [(b"", b"1")]), 1))


def test_read_pack_file_problems_are_pack_errors(tmp_path: Path, small_pack: bytes) -> None:
    with pytest.raises(PackIOError, match="no such pack file"):
        packlib.read_pack(tmp_path / "missing.pack")
    with pytest.raises(PackIOError, match="directory"):
        packlib.read_pack(tmp_path)
    with pytest.raises(PackIOError):
        packlib.read_pack(12345)  # type: ignore[arg-type]
    (tmp_path / "ok.pack").write_bytes(small_pack)
    assert packlib.read_pack(str(tmp_path / "ok.pack")).to_bytes() == small_pack
    assert packlib.read_pack(bytearray(small_pack)).to_bytes() == small_pack


def test_build_pack_refuses_bad_input_with_the_fix() -> None:
    v = np.eye(3, dtype=np.float32)
    ok = {"catalog_id": "c", "catalog_version": 1, "model_fingerprint": "f"}
    cases = [
        ((v, ["a", "b"], []), {}, "3 vectors but 2 vector_coin_ids"),
        ((np.array([[1, np.nan, 0], [0, 1, 0], [0, 0, 1]]), ["a", "b", "c"], []), {}, "vector 0 .*NaN"),
        ((np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1]]), ["a", "b", "c"], []), {}, "vector 1 .*all zeros"),
        ((v[0], ["a"], []), {}, "shape"),
        ((v, ["a", "b", "c"], [CoinRecord("z")]), {}, "record but no vector"),
        ((v, ["a", "b", "c"], [CoinRecord("a"), CoinRecord("a")]), {}, "two records"),
        ((v, ["a", "b", "c"], [CoinRecord("a", extra={"k": 3})]), {}, r"extra\['k'\] must be a str"),
        ((v, ["a", "b", "c"], [CoinRecord("a", label="\ud800")]), {}, "not valid Unicode"),
        ((v, ["a", "b", ""], []), {}, "must not be empty"),
        ((v, ["a", "b", "c"], [CoinRecord("a", label="x" * 70_000)]), {}, "65535-byte limit"),
        ((v, ["a", "b", "c"], []), {"quant": "int4"}, "quant='int4'"),
        ((v, ["a", "b", "c"], []), {"catalog_id": ""}, "catalog_id must not be empty"),
        ((v, ["a", "b", "c"], []), {"catalog_version": -1}, "catalog_version=-1"),
        ((v, ["a", "b", "c"], []), {"created_at": 1.5}, "created_at=1.5"),
    ]
    for args, overrides, message in cases:
        with pytest.raises(PackBuildError, match=message):
            packlib.build_pack(*args, **{**ok, **overrides})


# ------------------------------------------------------------------------------------------------ deltas


def _edit(catalog, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """v2 of the catalog: coins removed, added, relabelled, re-photographed; returns (vectors, ids, records)."""
    vectors, ids, records = catalog
    removed = {"coin-00001", "coin-00050", "coin-00299"}
    keep = [i for i, c in enumerate(ids) if c not in removed]
    v2, ids2 = vectors[keep].copy(), [ids[i] for i in keep]
    changed_vec = ids2.index("coin-00010")
    v2[changed_vec] += 0.5
    recs = {r.coin_id: r for r in records if r.coin_id not in removed}
    recs["coin-00020"] = CoinRecord("coin-00020", label="relabelled", extra={"note": "new"})
    new_ids = ["new-a", "new-b", "new-a"]
    v2 = np.concatenate([v2, rng.standard_normal((3, 64)).astype(np.float32)])
    ids2 += new_ids
    recs["new-b"] = CoinRecord("new-b", label="B")
    return v2, ids2, list(recs.values())


@pytest.mark.parametrize("quant", packlib.QUANTS)
def test_delta_reproduces_the_new_pack_byte_for_byte(catalog, quant: str) -> None:
    vectors, ids, records = catalog
    base_bytes = _build(vectors, ids, records, quant, version=3, created_at=100)
    v2, ids2, recs2 = _edit(catalog, np.random.default_rng(4))
    new_bytes = _build(v2, ids2, recs2, quant, version=4, created_at=200)
    base, new = packlib.read_pack(base_bytes), packlib.read_pack(new_bytes)
    delta = packlib.build_delta(base, new)
    d = packlib.read_delta(delta)
    assert d.removed == ("coin-00001", "coin-00050", "coin-00299")
    assert [r.coin_id for r in d.upserts] == ["coin-00010", "coin-00020", "new-a", "new-b"]
    assert (d.base_version, d.new_version, d.new_created_at) == (3, 4, 200)
    assert len(delta) < len(new_bytes) / 10
    rebuilt = packlib.apply_delta(base, delta)
    assert rebuilt.to_bytes() == new_bytes
    assert packlib.apply_delta(base, d) == new


def test_delta_without_changes_only_moves_the_version(catalog) -> None:
    vectors, ids, records = catalog
    base = packlib.read_pack(_build(vectors, ids, records, version=1, created_at=1))
    new_bytes = _build(vectors, ids, records, version=2, created_at=2)
    delta = packlib.build_delta(base, packlib.read_pack(new_bytes))
    assert len(delta) == 64 + 2 + 3 + 2 + len(FP) + 64 + 32  # header, ids, two sha256, checksum: no coins
    assert packlib.apply_delta(base, delta).to_bytes() == new_bytes


def test_delta_to_and_from_an_empty_pack(catalog) -> None:
    vectors, ids, records = catalog
    empty = packlib.read_pack(_build(np.zeros((0, 64)), [], [], version=1))
    full = packlib.read_pack(_build(vectors, ids, records, version=2))
    empty_again = packlib.read_pack(_build(np.zeros((0, 64)), [], [], version=3))
    assert packlib.apply_delta(empty, packlib.build_delta(empty, full)) == full
    assert packlib.apply_delta(full, packlib.build_delta(full, empty_again)) == empty_again


def test_apply_delta_refuses_the_wrong_base(catalog) -> None:
    vectors, ids, records = catalog
    v1 = packlib.read_pack(_build(vectors, ids, records, version=1))
    v2 = packlib.read_pack(_build(vectors[1:], ids[1:], [r for r in records if r.coin_id in set(ids[1:])], version=2))
    v3 = packlib.read_pack(_build(vectors[2:], ids[2:], [r for r in records if r.coin_id in set(ids[2:])], version=3))
    d23 = packlib.build_delta(v2, v3)
    with pytest.raises(PackDeltaError, match="from v2 to v3 but the base pack is v1"):
        packlib.apply_delta(v1, d23)
    other_model = packlib.read_pack(_build(vectors[1:], ids[1:], [], version=2, fp="other"))
    with pytest.raises(PackFingerprintError, match="model fp-test-0001 but the base pack is from model other"):
        packlib.apply_delta(other_model, d23)
    other_catalog = packlib.read_pack(_build(vectors, ids, records, version=2, catalog_id="elsewhere"))
    with pytest.raises(PackDeltaError, match="catalog 'cat', not 'elsewhere'"):
        packlib.apply_delta(other_catalog, d23)
    same_version_other_content = packlib.read_pack(_build(vectors, ids, records, version=2))
    with pytest.raises(PackDeltaError, match="differs from the one the delta was made from"):
        packlib.apply_delta(same_version_other_content, d23)
    fp16_base = packlib.read_pack(_build(vectors[1:], ids[1:], [], "fp16", version=2))
    with pytest.raises(PackDeltaError, match="int8/64-d"):
        packlib.apply_delta(fp16_base, d23)
    with pytest.raises(PackChecksumError):
        packlib.apply_delta(v2, d23[:100] + bytes([d23[100] ^ 1]) + d23[101:])
    with pytest.raises(PackMagicError, match="full pack, not a delta"):
        packlib.apply_delta(v2, v3.to_bytes())
    with pytest.raises(PackMagicError, match="delta pack: apply it"):
        packlib.read_pack(d23)
    assert packlib.apply_delta(v2, d23) == v3


def test_build_delta_refuses_incompatible_packs(catalog) -> None:
    vectors, ids, records = catalog
    v1 = packlib.read_pack(_build(vectors, ids, records, version=1))
    for new, message in [
        (packlib.read_pack(_build(vectors, ids, records, version=1)), "not after base version"),
        (packlib.read_pack(_build(vectors, ids, records, version=2, fp="x")), "models differ"),
        (packlib.read_pack(_build(vectors, ids, records, "fp32", version=2)), "layouts differ"),
        (packlib.read_pack(_build(vectors, ids, records, version=2, catalog_id="z")), "catalogs differ"),
    ]:
        with pytest.raises(PackDeltaError, match=message):
            packlib.build_delta(v1, new)


# ------------------------------------------------------------------------------------------------ golden


def test_golden_files_are_what_the_generator_writes() -> None:
    files, _ = golden()
    stale = [name for name, data in files.items() if (GOLDEN_DIR / name).read_bytes() != data]
    assert not stale, f"golden files drifted: {stale}; if the format change is intended, bump FORMAT_VERSION " \
                      "and run python -m tests.golden.packs.regenerate"


def test_golden_packs_parse_to_the_expected_values() -> None:
    expected = json.loads((GOLDEN_DIR / "expected.json").read_text(encoding="utf-8"))
    assert set(expected["packs"]) == {"int8.pack", "fp16.pack", "fp32.pack", "ivfpq.pack", "int8_v2.pack"}
    for name, want in expected["packs"].items():
        data = (GOLDEN_DIR / name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (want["size_bytes"], want["sha256"])
        p = packlib.read_pack(data)
        h = want["header"]
        assert (packlib.FORMAT_VERSION, p.catalog_id, p.catalog_version, p.created_at, p.dim, p.quant, p.metric,
                p.vector_count, p.coin_count, p.model_fingerprint) == (
            h["format_version"], h["catalog_id"], h["catalog_version"], h["created_at"], h["dim"], h["quant"],
            h["metric"], h["vector_count"], h["coin_count"], h["model_fingerprint"])
        assert p.coin_ids == want["vector_coin_ids"]
        np.testing.assert_array_equal(p.vectors_f32(), np.array(want["vectors_dequantised"], dtype=np.float32))
        records = [CoinRecord(**r) for r in want["records"]]
        assert list(p.records.values()) == records
        assert p.to_bytes() == data
        for query, ranking in zip(expected["queries"], want["search"], strict=True):
            for rescore in (False, True):
                got = p.search(np.array(query, dtype=np.float32), expected["top_k"], rescore=rescore)
                np.testing.assert_allclose([s for _, s in got], [s for _, s in ranking],
                                           atol=expected["score_tolerance"])
                if rescore:  # float64 per coin: exact ties stay exact, so the coin-id tie rule decides
                    assert [c for c, _ in got] == [c for c, _ in ranking]
                else:  # float32 BLAS may split an exact tie by one ulp: within a tied group any order
                    every = (reference_ivfpq_search(p, np.array(query, float), p.coin_count) if p.quant == "ivfpq"
                             else reference_search(p.vectors_f32().astype(np.float64), p.coin_ids,
                                                   np.array(query, float), p.coin_count))
                    for (coin, _), (_, want_score) in zip(got, ranking, strict=True):
                        assert coin in {c for c, s in every if s == want_score}


def test_golden_delta_and_broken_files() -> None:
    expected = json.loads((GOLDEN_DIR / "expected.json").read_text(encoding="utf-8"))
    for name, want in expected["deltas"].items():
        base = packlib.read_pack(GOLDEN_DIR / want["base"])
        result = packlib.apply_delta(base, GOLDEN_DIR / name)
        assert result.to_bytes() == (GOLDEN_DIR / want["result"]).read_bytes()
        assert result.sha256 == want["new_sha256"]
    errors = {cls.__name__: cls for cls in (PackTruncatedError, PackMagicError, PackVersionError, PackChecksumError,
                                            PackFormatError)}
    assert len(expected["broken"]) >= 6
    for name, want in expected["broken"].items():
        with pytest.raises(errors[want["error"]]) as info:
            packlib.read_pack(GOLDEN_DIR / name)
        assert type(info.value).__name__ == want["error"], name


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_pack_info_prints_header_counts_and_coins(capsys: pytest.CaptureFixture[str]) -> None:
    from coinvision.cli.main import main

    assert main(["pack", "info", str(GOLDEN_DIR / "int8.pack")]) == 0
    out = capsys.readouterr().out
    expected = json.loads((GOLDEN_DIR / "expected.json").read_text(encoding="utf-8"))["packs"]["int8.pack"]
    assert expected["sha256"] in out
    assert "golden-demo v1" in out and "0123456789abcdef" in out and "6 coins, 8 vectors" in out
    assert "bytes/vector: 16.0" in out  # dim 8: 8 codes + 4 coin index + 4 scale
    assert "jp-100yen" in out and "百円" in out and "Brandenburger Tor" in out

    assert main(["pack", "info", str(GOLDEN_DIR / "int8_v1_to_v2.delta")]) == 0
    assert "v1 -> v2" in capsys.readouterr().out


def test_cli_pack_info_on_a_broken_file_prints_the_error(capsys: pytest.CaptureFixture[str]) -> None:
    from coinvision.cli.main import main

    assert main(["pack", "info", str(GOLDEN_DIR / "bad_checksum.pack")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: pack file") and "sha256" in err and "Traceback" not in err


def test_scan_catalog_reads_both_layouts_and_classes_csv(tmp_path: Path, sample_root: Path) -> None:
    from coinvision.cli.pack_commands import scan_catalog

    coins, warnings = scan_catalog(sample_root / "euro_phone")
    assert len(coins) == 8 and not warnings
    one = next(c for c in coins if c.record.coin_id == "1c")
    assert (one.record.label, one.record.currency, one.record.country) == ("1 Cent", "Euro", "eurozone (common side)")
    assert one.record.extra == {} and len(one.images) == 5

    flat = tmp_path / "flat"
    (flat / "de-1").mkdir(parents=True)
    (flat / "empty").mkdir()
    shutil.copy(one.images[0], flat / "de-1" / "a.jpg")
    (flat / "de-1" / "notes.txt").write_text("not an image")
    (flat / "classes.csv").write_text("class_id,name,country,mint,n_images\nde-1,1 Euro,Germany,A,3\nxx,X,,,\n")
    coins, warnings = scan_catalog(flat)
    assert [c.record for c in coins] == [CoinRecord("de-1", label="1 Euro", country="Germany", extra={"mint": "A"})]
    assert coins[0].images == (flat / "de-1" / "a.jpg",)
    assert any("empty" in w for w in warnings) and any("xx" in w for w in warnings)

    (flat / "classes.csv").write_text("id,name\nde-1,x\n")
    with pytest.raises(DatasetError, match="no class_id column"):
        scan_catalog(flat)
    with pytest.raises(DatasetError, match="does not exist"):
        scan_catalog(tmp_path / "nope")


def test_cli_pack_build_end_to_end(tmp_path: Path, sample_root: Path, tiny_models_dir: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("coinvision.sdk.recognizer")
    from coinvision.cli.main import main
    from coinvision.sdk.images import load_image
    from coinvision.sdk.model_meta import ModelMetadata
    from coinvision.sdk.recognizer import Recognizer

    catalog = tmp_path / "catalog"
    (catalog / "images").mkdir(parents=True)
    src = sample_root / "coins211"
    lines = (src / "classes.csv").read_text().splitlines()
    shutil.copy(src / "classes.csv", catalog / "classes.csv")
    class_ids = [line.split(",")[0] for line in lines[1:4]]
    for cid in class_ids:
        (catalog / "images" / cid).mkdir()
        for image in sorted((src / "images" / cid).iterdir())[:2]:
            shutil.copy(image, catalog / "images" / cid / image.name)
    (catalog / "images" / class_ids[0] / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out" / "catalog.pack"
    rc = main(["pack", "build", str(catalog), "--out", str(out), "--models", str(tiny_models_dir),
               "--runtime", "onnx", "--catalog-id", "sample", "--catalog-version", "3", "--quant", "fp16",
               "--created-at", "1700000000"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "7 found, 6 embedded" in printed and "1 unreadable" in printed and "no coin found" in printed
    p = packlib.read_pack(out)
    fingerprint = ModelMetadata.read_sidecar(tiny_models_dir / "embedder.onnx").fingerprint
    assert (p.catalog_id, p.catalog_version, p.quant, p.created_at) == ("sample", 3, "fp16", 1_700_000_000)
    assert p.model_fingerprint == fingerprint and p.dim == 64
    assert sorted(set(p.coin_ids)) == sorted(class_ids) and p.vector_count == 6
    assert p.records[class_ids[0]].label == lines[1].split(",")[1]
    image = sorted((catalog / "images" / class_ids[1]).glob("*.jpg"))[0]
    vec = Recognizer.from_dir(tiny_models_dir, runtime="onnx").embed(load_image(image)).vector
    best = p.search(vec, 1)[0]
    assert best[1] > 0.999  # its own reference photo; the coin may tie with others under random weights
    assert best[0] == class_ids[1] or p.search(vec, 3)[1][1] > 0.999

    assert main(["pack", "build", str(catalog), "--out", str(out), "--models", str(tmp_path / "no-models")]) == 2
    assert packlib.read_pack(out) == p  # a failed build leaves the previous pack in place
