"""Writes sdk_kotlin/testdata/pipeline_golden.json: what the reference SDK (ONNX Runtime, models/release) does with
every bundled sample photo, for the Kotlin pipeline test to reproduce beyond the four photos of the conformance kit.

Per photo: segmentation (found, passes, bbox, mask area, first-pass area, sha256 of the packed mask), whether the
touching-coin split changed the mask (the segmenter with split_touching off gives another mask), the crop's sha256
and the top-5 against conformance/pack/golden.pack. Plus synthetic masks of touching and overlapping discs with the
exact output of ``preprocess.split_touching_coins``, and masks with notches, holes, stray pixels and lines with the
exact output of ``preprocess.convex_hull_fill``. Uses only the public Python SDK.

    OMP_NUM_THREADS=1 .venv/bin/python sdk_kotlin/tools/gen_pipeline_golden.py
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
from coinvision.sdk import Recognizer
from coinvision.sdk.images import load_image
from coinvision.sdk.pack import read_pack
from coinvision.sdk.preprocess import convex_hull_fill
from coinvision.sdk.segmenter import split_touching_coins

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "sdk_kotlin" / "testdata" / "pipeline_golden.json"
SAMPLES = ROOT / "examples" / "sample_coins"


def _mask_sha(mask: np.ndarray | None) -> str | None:
    return None if mask is None else hashlib.sha256(np.packbits(mask.astype(bool)).tobytes()).hexdigest()


def _mask_case(name: str, mask: np.ndarray, expected: np.ndarray) -> dict:
    """A synthetic mask and the reference's output on it, bit-packed, for a pixel-for-pixel test."""
    return {"name": name, "height": int(mask.shape[0]), "width": int(mask.shape[1]),
            "mask": base64.b64encode(np.packbits(mask).tobytes()).decode(),
            "expected": base64.b64encode(np.packbits(expected).tobytes()).decode(),
            "expected_area": int(expected.sum())}


def _discs(h: int, w: int, discs: list[tuple[float, float, float]]) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros((h, w), bool)
    for cx, cy, r in discs:
        mask |= (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    return mask


def main() -> None:
    rec = Recognizer.from_dir(ROOT / "models" / "release", runtime="onnx", num_threads=1,
                              pack=read_pack(ROOT / "conformance" / "pack" / "golden.pack"))
    plain = rec.segmenter.with_params(split_touching=False)
    photos = sorted((SAMPLES / "euro_phone" / "images").rglob("*.jpg"))[::2]
    photos += sorted((SAMPLES / "coins211" / "images").rglob("*.jpg"))[::6]
    photos += sorted((SAMPLES / "backgrounds" / "images").rglob("*.jpg"))[:2]
    photos += [SAMPLES / "scenes" / "far_coin.png"]  # a small coin the first pass misses: the tiles find it
    rows = []
    for path in photos:
        rgb = load_image(path)
        result = rec.recognize(rgb, top_k=5)
        seg = result.segmentation
        unsplit = plain.segment(rgb)
        rows.append({
            "file": str(path.relative_to(ROOT)),
            "found": seg.found, "passes": seg.passes, "tiled": seg.tiled,
            "bbox": None if seg.bbox is None else [int(v) for v in seg.bbox],
            "mask_area": 0 if seg.mask is None else int(seg.mask.sum()),
            "first_pass_area": 0 if seg.first_pass_mask is None else int(seg.first_pass_mask.sum()),
            "mask_sha256": _mask_sha(seg.mask),
            "split_changed_mask": _mask_sha(seg.mask) != _mask_sha(unsplit.mask),
            "crop_sha256": hashlib.sha256(np.ascontiguousarray(result.crop).tobytes()).hexdigest(),
            "top_k": [[m.coin_id, round(m.score, 6)] for m in result.matches],
            "unknown": result.unknown,
        })
    synthetic = []
    for name, h, w, discs in [
        ("two touching discs", 120, 200, [(60, 60, 50), (148, 62, 40)]),
        ("two overlapping discs", 140, 220, [(70, 70, 60), (150, 75, 45)]),
        ("three in a row", 90, 260, [(45, 45, 40), (125, 45, 40), (205, 48, 38)]),
        ("one disc with a notch", 150, 150, [(75, 75, 60)]),
        ("large pair, resampled", 300, 520, [(150, 150, 140), (380, 160, 120)]),
    ]:
        mask = _discs(h, w, discs)
        if name == "one disc with a notch":
            mask[70:80, 10:40] = False
        out = split_touching_coins(mask)
        synthetic.append(_mask_case(name, mask, out))
    hulls = [_mask_case(name, mask, convex_hull_fill(mask)) for name, mask in hull_masks()]
    OUT.write_text(json.dumps({"about": __doc__.split("\n\n")[0], "models": "models/release (onnx)",
                               "pack": "conformance/pack/golden.pack", "photos": rows, "split_touching": synthetic,
                               "convex_hull": hulls}, indent=1) + "\n")
    print(f"{len(rows)} photos ({sum(r['split_changed_mask'] for r in rows)} where the split changed the mask), "
          f"{len(synthetic)} synthetic masks, {len(hulls)} hull masks -> {OUT}")


def hull_masks() -> list[tuple[str, np.ndarray]]:
    """Masks for ``convex_hull_fill``: a coin with a finger's notch, a ring, two coins, stray pixels, a line, a
    diagonal, one pixel, slanted edges whose row bounds are not whole numbers."""
    rng = np.random.default_rng(7)
    notched = _discs(120, 140, [(70, 60, 50)])
    notched[40:75, 90:140] = False
    ring = _discs(101, 101, [(50, 50, 45)]) & ~_discs(101, 101, [(50, 50, 30)])
    stray = np.zeros((60, 90), bool)
    stray[rng.integers(0, 60, 25), rng.integers(0, 90, 25)] = True
    line = np.zeros((20, 30), bool)
    line[7, 3:25] = True
    diagonal = np.eye(25, dtype=bool)
    dot = np.zeros((9, 9), bool)
    dot[4, 4] = True
    slanted = np.zeros((70, 70), bool)
    slanted[[3, 20, 66, 41], [5, 61, 30, 2]] = True
    two = _discs(80, 200, [(40, 40, 35), (150, 45, 30)])
    return [("coin with a notch", notched), ("ring", ring), ("two coins", two), ("stray pixels", stray),
            ("line", line), ("diagonal", diagonal), ("one pixel", dot), ("four slanted corners", slanted)]


if __name__ == "__main__":
    main()
