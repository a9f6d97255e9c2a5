"""The ``ivfpq`` pack encoding (docs/PACK_FORMAT.md section 8): round trips, search against the float64 spec,
typed errors for every malformed index field, and mutations that only ever raise PackError. Numpy only (fast)."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from coinvision.sdk import pack as packlib
from coinvision.sdk.errors import PackBuildError, PackDeltaError, PackError, PackFormatError, PackTruncatedError
from coinvision.sdk.pack import CoinRecord
from coinvision.sdk.pack_ivfpq import IvfPqParams, default_params, section_bytes

from tests.golden.packs.regenerate import reference_ivfpq_search

DIM = 16
PARAMS = IvfPqParams(lists=8, subspaces=8, nprobe=3, seed=1)


def _clustered(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    centres = rng.standard_normal((n // 4, DIM))
    v = np.repeat(centres, 4, axis=0) + 0.05 * rng.standard_normal((n // 4 * 4, DIM))
    return v, [f"c{i:04d}" for i in np.repeat(np.arange(n // 4), 4).tolist()]


def _build(n: int = 400, params: IvfPqParams = PARAMS, seed: int = 0) -> tuple[bytes, np.ndarray, list[str]]:
    v, ids = _clustered(n, np.random.default_rng(seed))
    data = packlib.build_pack(v, ids, [CoinRecord("c0000", label="Erste")], catalog_id="world", catalog_version=3,
                              model_fingerprint="fp", quant="ivfpq", created_at=5, ivfpq=params)
    return data, v, ids


DATA, VECS, IDS = _build()


def _reseal(data: bytes | bytearray) -> bytes:
    return bytes(data[:-32]) + hashlib.sha256(bytes(data[:-32])).digest()


def test_round_trip_is_canonical_and_sized_as_documented() -> None:
    p = packlib.read_pack(DATA)
    assert p.to_bytes() == DATA and p.quant == "ivfpq" and p.dim == DIM
    assert (p.vector_count, p.coin_count) == (400, 100)
    assert p.vector_bytes == section_bytes(400, DIM, 8, 8) == 16 + 4 * 9 + 4 * 8 * DIM + 4 * 256 * DIM + 400 * (4 + 8)
    assert p.records["c0000"].label == "Erste"
    # every coin keeps all its vectors, whatever list they went to
    assert sorted(p.coin_ids) == sorted(IDS)
    assert p.vectors_of("c0007").shape == (4, DIM)


def test_dequantised_vectors_are_close_to_the_input() -> None:
    p = packlib.read_pack(DATA)
    unit = VECS / np.linalg.norm(VECS, axis=1, keepdims=True)
    deq = p.vectors_f32().astype(np.float64)
    for cid in ("c0000", "c0042", "c0099"):
        want = unit[[i for i, c in enumerate(IDS) if c == cid]]
        got = p.vectors_of(cid).astype(np.float64)
        cos = np.max(got @ want.T / np.linalg.norm(got, axis=1)[:, None], axis=1)
        assert np.all(cos > 0.95), (cid, cos)
    assert deq.shape == (400, DIM)


def test_search_matches_the_float64_spec_and_finds_the_right_coin() -> None:
    p = packlib.read_pack(DATA)
    rng = np.random.default_rng(7)
    hits = 0
    for i in range(0, 400, 9):
        q = VECS[i] + 0.02 * rng.standard_normal(DIM)
        ref = reference_ivfpq_search(p, q, 5)
        for rescore in (False, True):
            got = p.search(q, 5, rescore=rescore)
            assert [c for c, _ in got] == [c for c, _ in ref]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in ref], atol=1e-5)
        hits += got[0][0] == IDS[i]
    assert hits >= 40  # of 45 queries


def test_large_scans_take_the_partition_shortcut_with_the_same_answers() -> None:
    """Scans much longer than 8k rank only the vectors at or above the (8k)-th score: the same coins and scores as
    the spec, also with exact ties at that score (identical vectors of different coins)."""
    v, ids = _clustered(2000, np.random.default_rng(3))
    v[1000:1400] = v[0]  # 100 coins share coin c0000's first vector: a 400-way tie
    data = packlib.build_pack(v, ids, [], catalog_id="world", catalog_version=1, model_fingerprint="fp",
                              quant="ivfpq", created_at=5, ivfpq=IvfPqParams(lists=4, subspaces=8, nprobe=4, seed=2))
    p = packlib.read_pack(data)
    rng = np.random.default_rng(11)
    for q in [v[0], v[17] + 0.02 * rng.standard_normal(DIM), *rng.standard_normal((3, DIM))]:
        for k in (1, 5, 30):
            ref = reference_ivfpq_search(p, q, k)
            got = p.search(q, k)
            assert [c for c, _ in got] == [c for c, _ in ref]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in ref], atol=1e-5)


def test_batch_search_equals_single_search_and_edge_cases() -> None:
    p = packlib.read_pack(DATA)
    qs = VECS[:6]
    assert p.search_batch(qs, 4) == [p.search(q, 4) for q in qs]
    assert p.search(qs[0], 0) == []
    assert len(p.search(qs[0], 10_000)) <= p.coin_count


def test_default_params_and_build_errors() -> None:
    assert default_params(800_000, 64) == IvfPqParams(lists=1024, subspaces=32, nprobe=128)
    assert default_params(10, 64).lists == 1
    v, ids = _clustered(40, np.random.default_rng(0))
    common = {"catalog_id": "w", "catalog_version": 1, "model_fingerprint": "fp", "quant": "ivfpq"}
    with pytest.raises(PackBuildError, match="subspaces=5"):
        packlib.build_pack(v, ids, [], ivfpq=IvfPqParams(4, 5, 1), **common)
    with pytest.raises(PackBuildError, match="nprobe=9"):
        packlib.build_pack(v, ids, [], ivfpq=IvfPqParams(4, 8, 9), **common)
    with pytest.raises(PackBuildError, match="at least one vector"):
        packlib.build_pack(np.zeros((0, DIM)), [], [], **common)
    # more lists than vectors: capped at N, still a valid pack
    small = packlib.read_pack(packlib.build_pack(v[:3], ids[:3], [], ivfpq=IvfPqParams(8, 8, 8), **common))
    assert small._ivf.lists == 3


def test_build_is_deterministic() -> None:
    assert _build()[0] == DATA


def test_deltas_refuse_ivfpq() -> None:
    p = packlib.read_pack(DATA)
    v2 = packlib.read_pack(packlib.build_pack(VECS, IDS, [], catalog_id="world", catalog_version=4,
                                              model_fingerprint="fp", quant="ivfpq", created_at=6, ivfpq=PARAMS))
    with pytest.raises(PackDeltaError, match="full packs"):
        packlib.build_delta(p, v2)
    int8 = packlib.read_pack(packlib.build_pack(VECS[:4], IDS[:4], [], catalog_id="world", catalog_version=3,
                                                model_fingerprint="fp", created_at=5))
    int8_v4 = packlib.read_pack(packlib.build_pack(VECS[:4], IDS[:4], [], catalog_id="world", catalog_version=4,
                                                   model_fingerprint="fp", created_at=6))
    delta = packlib.build_delta(int8, int8_v4)
    with pytest.raises(PackDeltaError, match="ivfpq"):
        packlib.apply_delta(p, delta)
    bad = bytearray(delta)
    bad[6] = 4
    with pytest.raises(PackFormatError, match="ivfpq"):
        packlib.read_delta(_reseal(bad))


IVF = 64  # the ivfpq index header starts right after the 64-byte pack header
L, M = PARAMS.lists, PARAMS.subspaces
OFFSETS = IVF + 16
CENTROIDS = OFFSETS + 4 * (L + 1)
CODEBOOKS = CENTROIDS + 4 * L * DIM
COIN_INDEX = CODEBOOKS + 4 * 256 * DIM
CODES = COIN_INDEX + 4 * 400


def _patched(pos: int, raw: bytes) -> bytes:
    data = bytearray(DATA)
    data[pos : pos + len(raw)] = raw
    return _reseal(data)


@pytest.mark.parametrize(("pos", "raw", "error", "match"), [
    (IVF, struct.pack("<H", 0), PackFormatError, "list_count is 0"),
    (IVF + 2, struct.pack("<H", 0), PackFormatError, "nprobe 0"),
    (IVF + 2, struct.pack("<H", L + 1), PackFormatError, "nprobe 9"),
    (IVF + 4, struct.pack("<H", 0), PackFormatError, "subspace_count 0"),
    (IVF + 4, struct.pack("<H", 3), PackFormatError, "subspace_count 3"),
    (IVF + 6, struct.pack("<H", 4), PackFormatError, "code_bits 4"),
    (IVF + 8, b"\x01", PackFormatError, "reserved"),
    (IVF, struct.pack("<H", L + 1), PackTruncatedError, "truncated"),  # one more list: the section grows
    (IVF + 4, struct.pack("<H", 16), PackTruncatedError, "truncated"),  # 16 codes per vector
    (IVF, struct.pack("<H", L - 1), PackFormatError, "trailing"),
    (OFFSETS, struct.pack("<I", 1), PackFormatError, "offsets"),
    (OFFSETS + 4 * L, struct.pack("<I", 399), PackFormatError, "offsets"),
    (OFFSETS + 4, struct.pack("<I", 0xFFFFFFFF), PackFormatError, "offsets"),
    (CENTROIDS, struct.pack("<f", float("nan")), PackFormatError, "NaN"),
    (CODEBOOKS + 8, struct.pack("<f", float("inf")), PackFormatError, "NaN"),
    (COIN_INDEX, struct.pack("<I", 100), PackFormatError, "coin_count"),
    (COIN_INDEX, struct.pack("<I", 0xFFFFFFFF), PackFormatError, "coin_count"),
])
def test_malformed_index_fields_raise_typed_errors(pos: int, raw: bytes, error: type[PackError], match: str) -> None:
    with pytest.raises(error, match=match):
        packlib.read_pack(_patched(pos, raw))


def test_coin_order_within_a_list_and_coins_without_vectors_are_refused() -> None:
    p = packlib.read_pack(DATA)
    coin_index = np.frombuffer(DATA, "<u4", 400, COIN_INDEX).copy()
    offsets = p._ivf.offsets
    lst = int(np.argmax(np.diff(offsets)))
    s = int(offsets[lst])
    swapped = coin_index.copy()
    swapped[s], swapped[s + 1] = coin_index[s + 1], coin_index[s]
    if swapped[s] != coin_index[s]:
        with pytest.raises(PackFormatError, match="coin order"):
            packlib.read_pack(_patched(COIN_INDEX, swapped.astype("<u4").tobytes()))
    orphan = np.where(coin_index == 5, 6, coin_index)  # coin 5 loses its vectors
    with pytest.raises(PackFormatError, match=r"no vector|coin order"):
        packlib.read_pack(_patched(COIN_INDEX, orphan.astype("<u4").tobytes()))


def test_a_vector_decoding_to_zero_is_refused() -> None:
    # centroid and every codebook entry zero: every vector decodes to all zeros
    data = bytearray(DATA)
    data[CENTROIDS:COIN_INDEX] = bytes(COIN_INDEX - CENTROIDS)
    with pytest.raises(PackFormatError, match="all zeros"):
        packlib.read_pack(_reseal(data))


def test_seeded_mutations_only_raise_pack_errors() -> None:
    small = _build(n=40, params=IvfPqParams(lists=4, subspaces=4, nprobe=2))[0]
    rng = np.random.default_rng(0)
    outcomes: dict[str, int] = {}
    for i in range(600):
        data = bytearray(small)
        pos = int(rng.integers(0, len(data)))
        if i % 3 == 0:
            data[pos] ^= 1 << int(rng.integers(8))
        elif i % 3 == 1:
            data[pos : pos + 4] = rng.bytes(4)
        else:
            del data[pos:]
        candidate = _reseal(data) if i % 2 and len(data) >= 32 else bytes(data)
        try:
            p = packlib.read_pack(candidate)
        except PackError as exc:
            outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
            continue
        assert p.to_bytes() == candidate  # whatever parses is canonical
        p.search(np.ones(DIM), 3)
        outcomes["valid"] = outcomes.get("valid", 0) + 1
    # Codes and codebook floats take any value, so many mutations stay valid (and canonical, checked above).
    assert outcomes.get("PackFormatError", 0) > 0 and outcomes.get("valid", 0) > 0, outcomes
