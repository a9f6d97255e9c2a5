"""Golden pack vectors for every SDK (Python, Swift, Kotlin): tiny packs, a delta, broken files, expected.json.

    .venv/bin/python -m tests.golden.packs.regenerate          # rewrite the files in this folder
    .venv/bin/python -m tests.golden.packs.regenerate --check  # exit 1 if the committed files differ

Deterministic on every platform: the reference vectors and queries are small integers, so normalising and
quantising them uses only correctly rounded IEEE operations. Expected search scores are computed here in
float64 from the dequantised vectors with the formula of docs/PACK_FORMAT.md (not with ``Pack.search``), so
the test that compares them with ``Pack.search`` checks the implementation against the spec.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
from coinvision.sdk import pack as packlib
from coinvision.sdk.pack import CoinRecord
from coinvision.sdk.pack_ivfpq import IvfPqParams

HERE = Path(__file__).resolve().parent
DIM = 8
CATALOG_ID = "golden-demo"
FINGERPRINT = "0123456789abcdef"
CREATED_AT = 1_700_000_000
TOP_K = 3

RECORDS_V1 = [
    CoinRecord("at-1eur", label="1 Euro", country="Austria", currency="Euro", denomination="1 EUR", side="obverse",
               years="2002-", extra={"mint": "Wien", "artist": "Josef Kaiser"}),
    CoinRecord("de-2eur", label="2 Euro – Brandenburger Tor", country="Deutschland", currency="Euro",
               denomination="2 EUR", side="obverse", years="2002-"),
    CoinRecord("fr-50c", label="50 Centimes", country="France", currency="Franc", denomination="0.5 FRF",
               years="1962-2001"),
    CoinRecord("jp-100yen", label="百円", country="日本", currency="円", denomination="100 JPY", side="obverse"),
    CoinRecord("tie-a", label="Twin A"),
    CoinRecord("tie-b", label="Twin B"),
]
# (coin id, integer vector): given deliberately out of coin order; the pack stores them grouped by coin.
VECTORS_V1 = [
    ("fr-50c", [1, 0, 2, -3, 0, 4, -1, 2]),
    ("at-1eur", [9, 1, -2, 0, 3, 0, 1, -1]),
    ("de-2eur", [-2, 7, 1, 1, -4, 0, 2, 3]),
    ("at-1eur", [7, 3, -1, 2, 2, -1, 0, 0]),
    ("jp-100yen", [0, -1, 0, 0, 8, 2, -3, 1]),
    ("tie-a", [2, 2, 2, -2, 1, 1, -5, 3]),
    ("tie-b", [2, 2, 2, -2, 1, 1, -5, 3]),  # identical to tie-a: equal scores, tie broken by coin order
    ("fr-50c", [0, -2, 3, -2, 1, 5, 0, 1]),
]
QUERIES = [
    [8, 2, -2, 1, 3, 0, 1, -1],  # near at-1eur
    [1, -1, 3, -3, 1, 5, -1, 2],  # near fr-50c (max over its two vectors)
    [2, 2, 2, -2, 1, 1, -4, 3],  # the twins
    [-1, 1, 0, 0, 5, 1, -2, 2],  # jp-100yen, then others
    [0, 0, 0, 0, 0, 0, 0, -1],  # weak everywhere: negative scores come out too
]
# v2: fr-50c removed, at-1eur changed (one photo replaced), de-2eur relabelled, ch-5fr added.
RECORDS_V2 = [r for r in RECORDS_V1 if r.coin_id != "fr-50c"]
RECORDS_V2[1] = CoinRecord("de-2eur", label="2 Euro (Brandenburger Tor)", country="Deutschland", currency="Euro",
                           denomination="2 EUR", side="obverse", years="2002-")
RECORDS_V2.append(CoinRecord("ch-5fr", label="5 Franken", country="Schweiz", currency="CHF", denomination="5 CHF"))
VECTORS_V2 = [
    ("at-1eur", [9, 1, -2, 0, 3, 0, 1, -1]),
    ("at-1eur", [6, 4, -1, 2, 2, -1, 0, 1]),
    ("de-2eur", [-2, 7, 1, 1, -4, 0, 2, 3]),
    ("jp-100yen", [0, -1, 0, 0, 8, 2, -3, 1]),
    ("tie-a", [2, 2, 2, -2, 1, 1, -5, 3]),
    ("tie-b", [2, 2, 2, -2, 1, 1, -5, 3]),
    ("ch-5fr", [-3, 0, 0, 5, 0, -2, 4, 1]),
]


# ivfpq golden: 2 lists, 1 probed, 4 sub-spaces of 2 components (dim 8).
IVFPQ_PARAMS = IvfPqParams(lists=2, subspaces=4, nprobe=1, seed=0)


def _build(vectors: list[tuple[str, list[int]]], records: list[CoinRecord], quant: str, version: int) -> bytes:
    return packlib.build_pack(
        np.array([v for _, v in vectors], dtype=np.float64), [c for c, _ in vectors], records,
        catalog_id=CATALOG_ID, catalog_version=version, model_fingerprint=FINGERPRINT, quant=quant,
        created_at=CREATED_AT + (version - 1) * 86_400, ivfpq=IVFPQ_PARAMS if quant == "ivfpq" else None,
    )


def _reseal(data: bytes | bytearray) -> bytes:
    """Recompute the trailing sha256 (makes a structurally broken file that passes the checksum)."""
    return bytes(data[:-32]) + hashlib.sha256(bytes(data[:-32])).digest()


def reference_search(vectors: np.ndarray, vector_coin_ids: list[str], query: np.ndarray, k: int) -> list[list[Any]]:
    """The spec, in float64: cosine per vector, max per coin, best first, ties by coin id (UTF-8 byte order)."""
    q = query / np.sqrt(np.sum(query * query))
    # Row-wise sums, not BLAS: identical vectors must get bit-identical scores for the tie rule to be testable.
    cos = np.sum(vectors * q, axis=1) / np.sqrt(np.sum(vectors * vectors, axis=1))
    best: dict[str, float] = {}
    for cid, s in zip(vector_coin_ids, cos.tolist(), strict=True):
        best[cid] = max(best.get(cid, -2.0), s)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0].encode("utf-8")))
    return [[cid, score] for cid, score in ranked[:k]]


def reference_ivfpq_search(p: packlib.Pack, query: np.ndarray, k: int) -> list[list[Any]]:
    """docs/PACK_FORMAT.md 8.3 in float64: probe the nprobe lists nearest the query (L2 to the centroid, ties by
    list index), cosine of each probed dequantised vector, max per coin, best first, ties by coin id."""
    ivf = p._ivf
    q = query / np.sqrt(np.sum(query * query))
    cents = ivf.centroids.astype(np.float64)
    rank = np.sum(cents * q, axis=1) - 0.5 * np.sum(cents * cents, axis=1)
    probe = sorted(range(ivf.lists), key=lambda lst: (-rank[lst], lst))[: ivf.nprobe]
    vectors = p.vectors_f32().astype(np.float64)
    ids = p.coin_ids
    best: dict[str, float] = {}
    for lst in probe:
        for i in range(int(ivf.offsets[lst]), int(ivf.offsets[lst + 1])):
            s = float(np.sum(vectors[i] * q) / np.sqrt(np.sum(vectors[i] * vectors[i])))
            best[ids[i]] = max(best.get(ids[i], -2.0), s)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0].encode("utf-8")))
    return [[cid, score] for cid, score in ranked[:k]]


def _check_margins(ranking: list[list[Any]], name: str) -> None:
    """Golden rankings must not hinge on float32 rounding: scores differ by > 1e-4 or are exactly equal."""
    for (_, a), (_, b) in itertools.pairwise(ranking):
        if a != b and abs(a - b) < 1e-4:
            raise SystemExit(f"{name}: scores {a} and {b} are too close for a stable golden ranking; change the data")


def _describe(p: packlib.Pack, data: bytes) -> dict[str, Any]:
    vectors = p.vectors_f32()
    return {
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "header": {
            "format_version": packlib.FORMAT_VERSION, "catalog_id": p.catalog_id,
            "catalog_version": p.catalog_version, "created_at": p.created_at, "dim": p.dim, "quant": p.quant,
            "metric": p.metric, "vector_count": p.vector_count, "coin_count": p.coin_count,
            "model_fingerprint": p.model_fingerprint,
        },
        "vector_coin_ids": p.coin_ids,
        "vectors_dequantised": [[float(x) for x in row] for row in vectors],
        "int8_scales": [float(s) for s in p._scales] if p._scales is not None else None,
        "records": [
            {"coin_id": r.coin_id, "label": r.label, "country": r.country, "currency": r.currency,
             "denomination": r.denomination, "side": r.side, "years": r.years, "extra": r.extra}
            for r in p.records.values()
        ],
    }


def _describe_with_search(name: str, data: bytes) -> dict[str, Any]:
    p = packlib.read_pack(data)
    entry = _describe(p, data)
    vectors = p.vectors_f32().astype(np.float64)
    if p.quant == "ivfpq":
        ivf = p._ivf
        entry["ivfpq"] = {
            "list_count": ivf.lists, "nprobe": ivf.nprobe, "subspace_count": ivf.subspaces,
            "list_offsets": [int(x) for x in ivf.offsets],
            "centroids": [[float(x) for x in row] for row in ivf.centroids],
            "codes": [[int(x) for x in row] for row in p._data],
        }
    entry["search"] = []
    for i, q in enumerate(QUERIES):
        if p.quant == "ivfpq":
            ranking = reference_ivfpq_search(p, np.array(q, dtype=np.float64), TOP_K)
        else:
            ranking = reference_search(vectors, p.coin_ids, np.array(q, dtype=np.float64), TOP_K)
        _check_margins(ranking, f"{name} query {i}")
        entry["search"].append(ranking)
    return entry


def _dumps(doc: dict[str, Any]) -> str:
    """Indented JSON with every innermost list (a vector, a [coin, score] pair) on one line."""
    text = json.dumps(doc, indent=1, ensure_ascii=False)
    return re.sub(r"\[\n\s*([^\[\]{}]*?)\n\s*\]", lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text)


def golden() -> tuple[dict[str, bytes], dict[str, Any]]:
    """All golden files (name -> bytes) and the expected.json document."""
    files: dict[str, bytes] = {}
    expected: dict[str, Any] = {
        "about": "Golden pack vectors: parse results and search results every SDK must reproduce. "
                 "Scores are float64 reference values; float32 implementations agree within 1e-5. "
                 "Regenerate: python -m tests.golden.packs.regenerate. Format: docs/PACK_FORMAT.md.",
        "top_k": TOP_K,
        "score_tolerance": 1e-5,
        "queries": QUERIES,
        "packs": {},
    }
    for quant in packlib.ALL_QUANTS:
        data = _build(VECTORS_V1, RECORDS_V1, quant, 1)
        name = f"{quant}.pack"
        files[name] = data
        expected["packs"][name] = _describe_with_search(name, data)

    v1 = packlib.read_pack(files["int8.pack"])
    v2_bytes = _build(VECTORS_V2, RECORDS_V2, "int8", 2)
    v2 = packlib.read_pack(v2_bytes)
    files["int8_v2.pack"] = v2_bytes
    files["int8_v1_to_v2.delta"] = packlib.build_delta(v1, v2)
    delta = packlib.read_delta(files["int8_v1_to_v2.delta"])
    expected["packs"]["int8_v2.pack"] = _describe_with_search("int8_v2.pack", v2_bytes)
    expected["deltas"] = {
        "int8_v1_to_v2.delta": {
            "base": "int8.pack", "result": "int8_v2.pack", "size_bytes": len(files["int8_v1_to_v2.delta"]),
            "base_version": delta.base_version, "new_version": delta.new_version,
            "new_created_at": delta.new_created_at, "base_sha256": delta.base_sha256,
            "new_sha256": delta.new_sha256, "removed": list(delta.removed),
            "upserted": [r.coin_id for r in delta.upserts], "vector_count": len(delta.coin_index),
        },
    }

    good = files["int8.pack"]
    broken: dict[str, tuple[bytes, str, str]] = {}
    broken["bad_truncated.pack"] = (good[:100], "PackTruncatedError", "first 100 bytes of int8.pack")
    broken["bad_magic.pack"] = (b"XXXX" + good[4:], "PackMagicError", "magic replaced by XXXX")
    broken["bad_version.pack"] = (
        _reseal(good[:4] + struct.pack("<H", 2) + good[6:]), "PackVersionError", "format version 2 (resealed)"
    )
    flipped = bytearray(good)
    flipped[64 + 4 * 8 + 4 * 8 + 5] ^= 0x01  # one bit of an int8 code
    broken["bad_checksum.pack"] = (bytes(flipped), "PackChecksumError", "one bit of a vector flipped")
    huge = bytearray(good)
    huge[12:16] = struct.pack("<I", 1 << 31)  # header claims 2^31 vectors
    broken["bad_huge_count.pack"] = (bytes(huge), "PackTruncatedError", "vector_count = 2^31 (allocate nothing)")
    reserved = bytearray(good)
    reserved[40] = 1
    broken["bad_reserved.pack"] = (_reseal(reserved), "PackFormatError", "reserved header byte set (resealed)")
    unsorted = bytearray(good)
    unsorted[64:72] = struct.pack("<II", 1, 0)  # coin index 0,0,1,... -> 1,0,1,...: not grouped by coin
    broken["bad_grouping.pack"] = (_reseal(unsorted), "PackFormatError", "coin index not non-decreasing (resealed)")
    broken["bad_delta_as_pack.pack"] = (files["int8_v1_to_v2.delta"], "PackMagicError", "a delta passed as a pack")
    ivf_good = files["ivfpq.pack"]
    ivf_nprobe = bytearray(ivf_good)
    ivf_nprobe[66:68] = struct.pack("<H", 3)  # nprobe 3 > list_count 2
    broken["bad_ivfpq_nprobe.pack"] = (_reseal(ivf_nprobe), "PackFormatError", "ivfpq nprobe > list_count (resealed)")
    ivf_sub = bytearray(ivf_good)
    ivf_sub[68:70] = struct.pack("<H", 3)  # 3 sub-spaces do not divide dim 8 (the size check never runs)
    broken["bad_ivfpq_subspaces.pack"] = (_reseal(ivf_sub), "PackFormatError",
                                          "ivfpq subspace_count 3 does not divide dim 8 (resealed)")
    ivf_off = bytearray(ivf_good)
    ivf_off[80:84] = struct.pack("<I", 1)  # list_offsets[0] = 1: lists must start at vector 0
    broken["bad_ivfpq_offsets.pack"] = (_reseal(ivf_off), "PackFormatError", "ivfpq list_offsets[0] = 1 (resealed)")
    expected["broken"] = {}
    for name, (data, error, how) in broken.items():
        files[name] = data
        expected["broken"][name] = {"error": error, "how": how}
    files["expected.json"] = (_dumps(expected) + "\n").encode("utf-8")
    return files, expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = parser.parse_args(argv)
    files, _ = golden()
    stale = [n for n, b in files.items() if not (HERE / n).is_file() or (HERE / n).read_bytes() != b]
    if args.check:
        print("golden packs up to date" if not stale else f"golden packs differ: {', '.join(stale)}")
        return 1 if stale else 0
    for name, data in files.items():
        (HERE / name).write_bytes(data)
    print(f"wrote {len(files)} files to {HERE} ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
