"""Fuzz the pack parser and delta applier: seeded mutations of valid packs/deltas, only PackError may come out.

    python -m benchmarks.fuzz_pack                        # 12,000 mutations, JSON on stdout
    python -m benchmarks.fuzz_pack --out results/fuzz.json --mutations 50000 --seed 1
    python -m benchmarks.fuzz_pack --quick                # 2,000 mutations

Targets: an int8, an fp16 and an fp32 pack (dim 64, 40 coins with Unicode metadata, 100 vectors) and the delta
of each to a v2, and an ivfpq pack of the same coins (4 lists, 32 sub-spaces; no delta: ivfpq ships whole).
Mutations: bit flips, random byte runs, truncation, insertion, deletion, duplicated ranges and
header fields set to extreme values (counts of 2^31 and 2^32-1 among them), each applied as is and "resealed"
(sha256 recomputed, so hostile structure reaches the field parser). Per mutation the outcome is one of:
``PackError`` subclass (by name), ``valid`` (a pack that parses: it must re-serialise to exactly the input, or
for a delta reproduce exactly the v2 pack), or a failure (any other exception, or a non-canonical pack).
The peak Python allocation of each parse is traced (tracemalloc), to show that hostile sizes in a header
allocate nothing: the maximum stays a small multiple of the largest valid input.
Exit status 1 when any failure was seen.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from coinvision.sdk import pack as packlib
from coinvision.sdk.errors import PackError
from coinvision.sdk.pack import CoinRecord
from coinvision.sdk.pack_ivfpq import IvfPqParams

__all__ = ["MUTATORS", "main", "make_targets", "run"]

Mutator = Callable[[np.random.Generator, bytearray], None]


def _flip(rng: np.random.Generator, data: bytearray) -> None:
    for _ in range(int(rng.integers(1, 5))):
        data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))


def _overwrite(rng: np.random.Generator, data: bytearray) -> None:
    pos = int(rng.integers(len(data)))
    data[pos : pos + int(rng.integers(1, 9))] = rng.bytes(int(rng.integers(1, 9)))


def _truncate(rng: np.random.Generator, data: bytearray) -> None:
    del data[int(rng.integers(len(data))) :]


def _insert(rng: np.random.Generator, data: bytearray) -> None:
    pos = int(rng.integers(len(data) + 1))
    data[pos:pos] = rng.bytes(int(rng.integers(1, 33)))


def _delete(rng: np.random.Generator, data: bytearray) -> None:
    pos = int(rng.integers(len(data)))
    del data[pos : pos + int(rng.integers(1, 33))]


def _duplicate(rng: np.random.Generator, data: bytearray) -> None:
    pos = int(rng.integers(len(data)))
    chunk = data[pos : pos + int(rng.integers(1, 65))]
    at = int(rng.integers(len(data) + 1))
    data[at:at] = chunk


_HEADER_OFFSETS = (4, 6, 7, 8, 10, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 60)
_EXTREMES = (b"\0\0\0\0", b"\xff\xff\xff\xff", b"\0\0\0\x80", b"\x01\0\0\0", b"\x02\0\0\0", b"\xff\xff\0\0")


def _header_field(rng: np.random.Generator, data: bytearray) -> None:
    offset = int(rng.choice(_HEADER_OFFSETS))
    data[offset : offset + 4] = _EXTREMES[int(rng.integers(len(_EXTREMES)))]


MUTATORS: dict[str, Mutator] = {
    "bit_flip": _flip, "overwrite": _overwrite, "truncate": _truncate, "insert": _insert, "delete": _delete,
    "duplicate_range": _duplicate, "header_field": _header_field,
}


def make_targets(seed: int) -> dict[str, tuple[bytes, bytes, bytes]]:
    """quant -> (v1 pack, v2 pack, delta v1 -> v2), deterministic for a seed."""
    rng = np.random.default_rng(seed)
    coins = [f"coin-{i:03d}" for i in range(40)]
    records = [CoinRecord(c, label=f"Münze {i} – 硬币", country=("Österreich", "日本", "France")[i % 3],
                          currency="EUR", denomination=f"{i} c", side=("obverse", "reverse")[i % 2], years="2002-",
                          extra={"mint": "W"} if i % 4 == 0 else {}) for i, c in enumerate(coins)]
    ids = [coins[i % 40] for i in range(100)]
    out = {}
    for quant in packlib.QUANTS:
        v = rng.standard_normal((100, 64)).astype(np.float32)
        common = {"catalog_id": "fuzz-catalog", "model_fingerprint": "0123456789abcdef", "quant": quant}
        v1 = packlib.build_pack(v, ids, records, catalog_version=1, created_at=1_700_000_000, **common)
        keep = [i for i in range(100) if ids[i] not in ("coin-003", "coin-017")]
        v2_vectors = np.concatenate([v[keep], rng.standard_normal((3, 64)).astype(np.float32)])
        v2_vectors[0] += 0.3
        v2_ids = [ids[i] for i in keep] + ["coin-new", "coin-new", "coin-007"]
        v2_records = [r for r in records if r.coin_id not in ("coin-003", "coin-017")]
        v2 = packlib.build_pack(v2_vectors, v2_ids, v2_records, catalog_version=2, created_at=1_700_086_400,
                                **common)
        out[quant] = (v1, v2, packlib.build_delta(packlib.read_pack(v1), packlib.read_pack(v2)))
    # ivfpq (world-sized packs): a pack target only, deltas never carry it.
    v = rng.standard_normal((100, 64)).astype(np.float32)
    ivf = packlib.build_pack(v, ids, records, catalog_id="fuzz-catalog", model_fingerprint="0123456789abcdef",
                             quant="ivfpq", catalog_version=1, created_at=1_700_000_000,
                             ivfpq=IvfPqParams(lists=4, subspaces=32, nprobe=2))
    out["ivfpq"] = (ivf, b"", b"")
    return out


def _reseal(data: bytearray) -> bytes:
    if len(data) < 32:
        return bytes(data)
    return bytes(data[:-32]) + hashlib.sha256(bytes(data[:-32])).digest()


def _evaluate(target: str, bad: bytes, v1: packlib.Pack, v2_bytes: bytes) -> str:
    """'valid', a PackError subclass name, or 'FAIL: ...'."""
    try:
        if target == "pack":
            pack = packlib.read_pack(bad)
            if pack.to_bytes() != bad:
                return "FAIL: accepted a non-canonical pack (to_bytes differs from the input)"
            pack.search(np.ones(pack.dim, dtype=np.float32), 5)
        else:
            pack = packlib.apply_delta(v1, bad)
            if pack.to_bytes() != v2_bytes:
                return "FAIL: delta applied but did not reproduce the v2 pack"
        return "valid"
    except PackError as exc:
        if not str(exc):
            return "FAIL: PackError without a message"
        return type(exc).__name__
    except Exception as exc:  # the point of the fuzzer: anything else is a bug to report
        return f"FAIL: {type(exc).__name__}: {exc}"


def run(mutations: int, seed: int) -> dict[str, Any]:
    targets = make_targets(seed)
    parsed_v1 = {q: packlib.read_pack(t[0]) for q, t in targets.items()}
    rng = np.random.default_rng(seed + 1)
    kinds = list(MUTATORS)
    outcomes: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    failures: list[dict[str, Any]] = []
    peak_bytes = {"pack": 0, "delta": 0}
    unchanged = 0
    started = time.perf_counter()
    for i in range(mutations):
        quant = packlib.ALL_QUANTS[i % 4]
        target = "pack" if (i // 4) % 4 or quant == "ivfpq" else "delta"  # 3/4 packs, 1/4 deltas; ivfpq packs only
        kind = kinds[int(rng.integers(len(kinds)))]
        resealed = bool(rng.integers(2))
        v1, v2, delta = targets[quant]
        data = bytearray(v1 if target == "pack" else delta)
        MUTATORS[kind](rng, data)
        bad = _reseal(data) if resealed else bytes(data)
        if bad == (v1 if target == "pack" else delta):
            unchanged += 1
        tracemalloc.start()
        try:
            outcome = _evaluate(target, bad, parsed_v1[quant], v2)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        peak_bytes[target] = max(peak_bytes[target], peak)
        key = f"{target}/{kind}/{'resealed' if resealed else 'raw'}"
        by_kind.setdefault(key, Counter())[outcome.split(":")[0]] += 1
        outcomes[outcome.split(":")[0]] += 1
        if outcome.startswith("FAIL") and len(failures) < 20:
            failures.append({"index": i, "quant": quant, "target": key, "outcome": outcome,
                             "input_hex": bad[:256].hex()})
    elapsed = time.perf_counter() - started
    return {
        "mutations": mutations,
        "seed": seed,
        "target_sizes_bytes": {q: {"pack": len(t[0]), "delta": len(t[2])} for q, t in targets.items() if t[2]}
        | {q: {"pack": len(t[0])} for q, t in targets.items() if not t[2]},
        "outcomes": dict(outcomes.most_common()),
        "failures": outcomes.get("FAIL", 0),
        "unchanged_inputs": unchanged,
        "by_mutation": {k: dict(v.most_common()) for k, v in sorted(by_kind.items())},
        "failure_examples": failures,
        # read_pack (pack targets) and apply_delta incl. re-serialising the base and the result (delta targets)
        "max_peak_alloc_bytes": peak_bytes,
        "max_pack_peak_alloc_per_pack_byte": round(peak_bytes["pack"] / max(len(t[0]) for t in targets.values()), 2),
        "elapsed_s": round(elapsed, 2),
        "mutations_per_s": round(mutations / elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutations", type=int, default=12_000, help="number of mutated inputs (default 12,000)")
    parser.add_argument("--quick", action="store_true", help="2,000 mutations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here (default: stdout)")
    args = parser.parse_args(argv)
    mutations = 2_000 if args.quick else args.mutations
    results = run(mutations, args.seed)
    table = [{"target": k, **v} for k, v in results["by_mutation"].items()]
    payload = {
        "benchmark": "fuzz_pack",
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "command": "python -m benchmarks.fuzz_pack " + " ".join(sys.argv[1:] if argv is None else argv),
        "table": table,
        "results": results,
    }
    text = json.dumps(payload, indent=2, ensure_ascii=False)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
        print(f"{mutations} mutations, {results['failures']} failures; wrote {args.out}")
    else:
        print(text)
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
