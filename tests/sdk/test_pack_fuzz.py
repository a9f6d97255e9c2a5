"""Property tests: mutated packs and deltas give a PackError or a valid pack, never another exception.

Mutations are tried twice: as they are (the sha256 catches almost all) and "resealed" (the checksum
recomputed), which sends hostile structure past the checksum into the field parser. Whatever parses must be
canonical: its ``to_bytes()`` is exactly the input. benchmarks/fuzz_pack.py runs the same idea at scale.
"""

from __future__ import annotations

import hashlib
import string

import numpy as np
import pytest
from coinvision.sdk import pack as packlib
from coinvision.sdk.errors import PackError
from coinvision.sdk.pack import CoinRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
SMALL = settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _reseal(data: bytes) -> bytes:
    return data[:-32] + hashlib.sha256(data[:-32]).digest() if len(data) >= 32 else data


def _records() -> list[CoinRecord]:
    return [
        CoinRecord("a-1", label="Ein Euro", country="Österreich", extra={"mint": "Wien", "z": ""}),
        CoinRecord("b-2", label="百円", currency="円", side="obverse", years="1967-"),
        CoinRecord("c-3"),
    ]


def _packs() -> dict[str, tuple[bytes, bytes, bytes]]:
    """quant -> (v1 pack, v2 pack, delta v1 -> v2), small enough for hundreds of parses per second."""
    rng = np.random.default_rng(0)
    out = {}
    for quant in packlib.QUANTS:
        v = rng.standard_normal((5, 8))
        ids = ["a-1", "b-2", "a-1", "c-3", "b-2"]
        common = {"catalog_id": "fuzz", "model_fingerprint": "fp", "quant": quant}
        v1 = packlib.build_pack(v, ids, _records(), catalog_version=1, created_at=10, **common)
        v2 = packlib.build_pack(np.concatenate([v[1:], rng.standard_normal((1, 8))]), [*ids[1:], "d-4"],
                                _records()[1:], catalog_version=2, created_at=20, **common)
        out[quant] = (v1, v2, packlib.build_delta(packlib.read_pack(v1), packlib.read_pack(v2)))
    return out


PACKS = _packs()


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "header", "overwrite"]))
    if kind == "flip":
        for pos, bit in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 7)), min_size=1,
                                      max_size=4)):
            data[pos] ^= 1 << bit
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif kind == "insert":
        pos = draw(st.integers(0, len(data)))
        data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete":
        pos = draw(st.integers(0, len(data) - 1))
        del data[pos : pos + draw(st.integers(1, 16))]
    elif kind == "header":  # a header field set to an extreme value
        offset = draw(st.sampled_from([4, 6, 7, 8, 10, 12, 16, 20, 24, 32, 36, 40, 44]))
        data[offset : offset + 4] = draw(st.sampled_from([b"\0\0\0\0", b"\xff\xff\xff\xff", b"\0\0\0\x80",
                                                          b"\x01\0\0\0", b"\x02\0\0\0"]))
    else:  # any run of bytes replaced (a table string length, a coin index, a scale...)
        pos = draw(st.integers(0, len(data) - 1))
        raw = draw(st.binary(min_size=1, max_size=8))
        data[pos : pos + len(raw)] = raw
    out = bytes(data)
    return _reseal(out) if draw(st.booleans()) else out


@FUZZ
@given(st.data())
def test_mutated_packs_give_pack_error_or_a_canonical_pack(data: st.DataObject) -> None:
    quant = data.draw(st.sampled_from(packlib.QUANTS))
    bad = data.draw(mutated(PACKS[quant][0]))
    try:
        pack = packlib.read_pack(bad)
    except PackError as exc:
        assert str(exc)
        return
    assert pack.to_bytes() == bad  # anything accepted is canonical, so it round-trips exactly
    pack.search(np.ones(pack.dim), 3)


@FUZZ
@given(st.data())
def test_mutated_deltas_give_pack_error_or_the_new_pack(data: st.DataObject) -> None:
    quant = data.draw(st.sampled_from(packlib.QUANTS))
    v1, v2, delta = PACKS[quant]
    bad = data.draw(mutated(delta))
    try:
        result = packlib.apply_delta(packlib.read_pack(v1), bad)
    except PackError as exc:
        assert str(exc)
        return
    assert result.to_bytes() == v2  # the new pack's sha256 travels in the delta


_TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12)
_ID = st.text(alphabet=string.ascii_letters + string.digits + "-_äö日", min_size=1, max_size=6)


@st.composite
def catalogs(draw: st.DrawFn, dim: int) -> tuple[np.ndarray, list[str], list[CoinRecord]]:
    coin_ids = draw(st.lists(_ID, min_size=0, max_size=6, unique=True))
    vector_ids = [cid for cid in coin_ids for _ in range(draw(st.integers(1, 3)))]
    vector_ids = draw(st.permutations(vector_ids))
    values = draw(st.lists(st.integers(-1000, 1000), min_size=dim * len(vector_ids),
                           max_size=dim * len(vector_ids)))
    vectors = np.array(values, dtype=np.float64).reshape(len(vector_ids), dim)
    vectors[:, 0] += np.where(np.all(vectors == 0, axis=1), 1, 0)  # no all-zero vector
    records = [
        CoinRecord(cid, label=draw(_TEXT), country=draw(_TEXT), years=draw(_TEXT),
                   extra=draw(st.dictionaries(_ID, _TEXT, max_size=3)))
        for cid in coin_ids if draw(st.booleans())
    ]
    return vectors, list(vector_ids), records


@SMALL
@given(st.data())
def test_random_packs_round_trip_and_deltas_reproduce_them(data: st.DataObject) -> None:
    dim = data.draw(st.integers(1, 12))
    quant = data.draw(st.sampled_from(packlib.QUANTS))
    common = {"catalog_id": data.draw(_ID), "model_fingerprint": data.draw(_ID), "quant": quant}
    (va, ia, ra), (vb, ib, rb) = data.draw(catalogs(dim)), data.draw(catalogs(dim))
    a = packlib.build_pack(va, ia, ra, catalog_version=1, created_at=data.draw(st.integers(-(2**40), 2**40)),
                           **common)
    b = packlib.build_pack(vb, ib, rb, catalog_version=data.draw(st.integers(2, 2**32 - 1)), **common)
    pa, pb = packlib.read_pack(a), packlib.read_pack(b)
    assert pa.to_bytes() == a and pb.to_bytes() == b
    assert sorted(pa.coin_ids) == sorted(ia)
    for rec in ra:
        assert pa.records[rec.coin_id] == rec
    assert packlib.apply_delta(pa, packlib.build_delta(pa, pb)).to_bytes() == b


@pytest.mark.parametrize("quant", packlib.QUANTS)
def test_every_single_bit_flip_of_a_pack_is_caught(quant: str) -> None:
    good = PACKS[quant][0]
    for pos in range(len(good)):
        for bit in (0, 7):
            bad = bytearray(good)
            bad[pos] ^= 1 << bit
            with pytest.raises(PackError):
                packlib.read_pack(bytes(bad))
