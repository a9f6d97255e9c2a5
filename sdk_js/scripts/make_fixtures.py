"""Golden fixtures for the TypeScript SDK's tests, made with the public Python reference SDK (coinvision.sdk) and
OpenCV exactly as the reference calls it. Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python sdk_js/scripts/make_fixtures.py

Writes sdk_js/test/fixtures/ (committed):
- ops.json: seeded random inputs and OpenCV's outputs for each image op the pipeline uses (resize bilinear /
  area, distance transform, connected components, split_touching_coins, convex_hull_fill, rotation views).
- pipeline/: a catalog pack built by the Python SDK on ONNX Runtime (first 4 photos of every sample class), and
  per query photo (the 5th of each class, a background photo, a two-coin scene, an EXIF-rotated JPEG) the
  reference's output of every stage: decoded RGB (PNG), letterbox, pass-1 logits, masks, bbox, crop, embedding,
  top-5. The conformance kit (conformance/) supersedes these where it has the same stage.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from coinvision.sdk import preprocess as pp
from coinvision.sdk.images import load_image
from coinvision.sdk.pack import CoinRecord, Pack
from coinvision.sdk.recognizer import Recognizer
from coinvision.sdk.segmenter import split_touching_coins
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "sdk_js" / "test" / "fixtures"
MODELS = ROOT / "models" / "release"
SAMPLE = ROOT / "examples" / "sample_coins"


def b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")


def arr_json(arr: np.ndarray) -> dict:
    return {"dtype": str(arr.dtype), "shape": list(arr.shape), "b64": b64(arr)}


def png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path, optimize=True)


def disc_mask(h: int, w: int, discs: list[tuple[float, float, float]]) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w), bool)
    for cx, cy, r in discs:
        m |= (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    return m


def make_ops(rng: np.random.Generator) -> dict:
    ops: dict = {"resize": [], "dist": [], "components": [], "split": [], "rotate": []}
    # resize: uint8 3-channel and float32 1-channel, bilinear and area, up and down, odd sizes
    for src, dst in [((37, 53), (128, 92)), ((224, 222), (128, 127)), ((64, 64), (32, 32)), ((31, 17), (9, 5)),
                     ((97, 101), (160, 160)), ((33, 33), (128, 128)), ((120, 80), (64, 43)), ((90, 90), (128, 128))]:
        img = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
        # a smooth photo-like image for the big case (most of a photo is smooth), noise (the worst case) otherwise
        a, name = (cv2.GaussianBlur(img, (0, 0), 3), "smooth") if src[0] > 200 else (img, "noise")
        outs = {interp: arr_json(cv2.resize(a, (dst[1], dst[0]), interpolation=flag))
                for interp, flag in (("bilinear", cv2.INTER_LINEAR), ("area", cv2.INTER_AREA))}
        ops["resize"].append({"kind": f"u8c3-{name}", "src": arr_json(a), "dst": outs})
        f = rng.standard_normal(src).astype(np.float32)
        outs = {interp: arr_json(cv2.resize(f, (dst[1], dst[0]), interpolation=flag))
                for interp, flag in (("bilinear", cv2.INTER_LINEAR), ("area", cv2.INTER_AREA))}
        ops["resize"].append({"kind": "f32c1", "src": arr_json(f), "dst": outs})
    # distance transform (L2, mask 5) and 8-connected components on blob masks
    for i in range(6):
        h, w = int(rng.integers(20, 96)), int(rng.integers(20, 96))
        discs = [(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, 30)) for _ in range(int(rng.integers(1, 5)))]
        m = disc_mask(h, w, discs).astype(np.uint8)
        if i % 2:
            m[rng.integers(0, h, 40), rng.integers(0, w, 40)] ^= 1  # specks: several components, holes
        dist = cv2.distanceTransform(m, cv2.DIST_L2, 5)
        ops["dist"].append({"mask": arr_json(m), "dist": arr_json(dist)})
        count, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        largest = (labels == int(np.argmax(areas)) + 1).astype(np.uint8) if count > 1 else np.zeros_like(m)
        ops["components"].append({"mask": arr_json(m), "count": int(count), "largest": arr_json(largest)})
    # split_touching_coins on coin-like masks: two/three touching or overlapping discs, one disc, a notched disc
    cases = [
        (220, 300, [(90, 110, 70), (215, 120, 60)]),
        (200, 200, [(100, 100, 80)]),
        (240, 380, [(100, 120, 80), (230, 120, 60), (320, 110, 45)]),
        (180, 260, [(80, 90, 70), (175, 90, 40)]),
        (90, 90, [(30, 45, 25), (62, 45, 22)]),
        (300, 300, [(150, 150, 120), (150, 150, 40)]),
    ]
    for h, w, discs in cases:
        m = disc_mask(h, w, discs)
        if len(discs) == 2 and discs[1][2] == 40 and h == 300:
            m &= ~disc_mask(h, w, [(150, 150, 30)])  # a holed coin: one disc, not two
        out = split_touching_coins(m)
        ops["split"].append({"mask": arr_json(m.astype(np.uint8)), "out": arr_json(out.astype(np.uint8))})
    # convex_hull_fill: a notched coin, a ring, two coins, stray pixels, a slanted quadrilateral, a line, one pixel
    ops["hull"] = []
    stray = np.zeros((50, 70), bool)
    hull_rng = np.random.default_rng(11)  # its own draws: the other fixtures stay as they were
    stray[hull_rng.integers(0, 50, 20), hull_rng.integers(0, 70, 20)] = True
    slanted = np.zeros((64, 64), bool)
    slanted[[2, 19, 60, 37], [7, 58, 29, 1]] = True
    line = np.zeros((12, 40), bool)
    line[5, 2:35] = True
    dot = np.zeros((7, 7), bool)
    dot[3, 3] = True
    notched = disc_mask(110, 130, [(65, 55, 45)])
    notched[30:60, 80:130] = False
    ring = disc_mask(91, 91, [(45, 45, 40)]) & ~disc_mask(91, 91, [(45, 45, 26)])
    for m in (notched, ring, disc_mask(70, 180, [(35, 35, 30), (135, 40, 26)]), stray, slanted, line, dot):
        out = pp.convex_hull_fill(m)
        ops["hull"].append({"mask": arr_json(m.astype(np.uint8)), "out": arr_json(out.astype(np.uint8))})
    # rotation views: 4 (rot90 permutations) and 6 (bilinear warpAffine)
    img = cv2.GaussianBlur(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), (0, 0), 1.5)
    for n in (4, 6):
        views = pp.rotation_views(img, n, fill_value=0)
        ops["rotate"].append({"n": n, "src": arr_json(img), "views": [arr_json(v) for v in views]})
    return ops


def photos() -> tuple[list[tuple[str, str, Path]], list[tuple[str, Path]]]:
    """(coin_id, label, path) of the catalog photos; (name, path) of the query photos."""
    catalog, queries = [], []
    for dataset in ("euro_phone", "coins211"):
        labels = {}
        for line in (SAMPLE / dataset / "classes.csv").read_text().splitlines()[1:]:
            cid, name = line.split(",")[:2]
            labels[cid] = name
        for cdir in sorted((SAMPLE / dataset / "images").iterdir()):
            files = sorted(cdir.iterdir())
            coin_id = f"{dataset}-{cdir.name}"
            catalog += [(coin_id, labels[cdir.name], f) for f in files[:4]]
            queries.append((f"{coin_id}-{files[4].stem}", files[4]))
    return catalog, queries


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20251125)
    (OUT / "ops.json").write_text(json.dumps(make_ops(rng)))
    print("ops.json", (OUT / "ops.json").stat().st_size, "bytes")

    rec = Recognizer.from_dir(MODELS, runtime="onnx", num_threads=1)
    catalog, queries = photos()
    vectors = np.stack([rec.embed(p).vector for _, _, p in catalog])
    copper = ("euro_phone-1c", "euro_phone-2c")
    records = {cid: CoinRecord(coin_id=cid, label=label, country="x",
                               extra={"coin_group": "euro-copper-small"} if cid in copper else {})
               for cid, label, _ in catalog}
    pack = Pack.from_vectors(vectors, [c for c, _, _ in catalog], list(records.values()), catalog_id="samples",
                             catalog_version=1, model_fingerprint=rec.fingerprint, quant="int8", created_at=1764000000)
    pipe = OUT / "pipeline"
    pipe.mkdir(exist_ok=True)
    (pipe / "samples.pack").write_bytes(pack.to_bytes())
    rec.load_pack(pack)

    # extra queries: a background (no coin), two coins touching side by side, an EXIF-rotated JPEG, a far coin (tiles)
    extra_dir = pipe / "inputs"
    extra_dir.mkdir(exist_ok=True)
    a = np.asarray(Image.open(queries[0][1]).convert("RGB"))
    b = np.asarray(Image.open(queries[3][1]).convert("RGB"))
    h = min(a.shape[0], b.shape[0])
    pair = np.concatenate([a[:h], b[:h]], axis=1)
    Image.fromarray(pair).save(extra_dir / "two_coins.jpg", quality=92)
    exif = Image.Exif()
    exif[274] = 6  # rotate 90 CW to display
    Image.fromarray(np.ascontiguousarray(pair[:, :300])).save(extra_dir / "exif6.jpg", quality=92, exif=exif)
    Image.fromarray(pair[:, :300]).save(extra_dir / "plain.png")
    background = sorted((SAMPLE / "backgrounds" / "images").iterdir())[0]
    all_queries = [*queries, ("background", background), ("two_coins", extra_dir / "two_coins.jpg"),
                   ("exif6", extra_dir / "exif6.jpg"), ("plain_png", extra_dir / "plain.png"),
                   ("far_coin", SAMPLE / "scenes" / "far_coin.png")]  # the first pass misses it, the tiles find it

    seg = rec.segmenter
    size = seg.params.size_px
    entries = []
    for i, (name, path) in enumerate(all_queries):
        rgb = load_image(path)
        result = rec.recognize(path, top_k=5)
        emb = result.sides[0]
        entry = {
            "name": name, "path": str(path.relative_to(ROOT)),
            "decoded": {"shape": list(rgb.shape), "sha256": hashlib.sha256(rgb.tobytes()).hexdigest()},
            "found": emb.segmentation.found, "tiled": emb.segmentation.tiled,
            "bbox": list(map(int, emb.segmentation.bbox or [])),
            "mask_area": int(emb.segmentation.mask.sum()) if emb.segmentation.found else 0,
            "embedding": [float(x) for x in emb.vector],
            "top5": [[m.coin_id, m.score] for m in result.matches], "unknown": result.unknown,
        }
        detailed = i % 6 == 0 or i >= len(queries)
        if detailed:  # every stage, as files
            d = pipe / name
            d.mkdir(exist_ok=True)
            png(d / "decoded.png", rgb)
            square, box = pp.letterbox(rgb, size, seg.params.pad_value)
            png(d / "letterbox.png", square)
            logits = np.asarray(seg.model.predict(square), np.float32).reshape(size, size)
            (d / "logits1.f32").write_bytes(logits.astype("<f4").tobytes())
            entry["letterbox"] = {"scale": box.scale, "pad_x": box.pad_x, "pad_y": box.pad_y}
            if emb.segmentation.found:
                png(d / "mask1.png", emb.segmentation.first_pass_mask.astype(np.uint8) * 255)
                png(d / "mask.png", emb.segmentation.mask.astype(np.uint8) * 255)
            png(d / "crop.png", emb.crop)
            entry["files"] = name
        entries.append(entry)
        print(name, entry["top5"][0] if entry["top5"] else None, "found" if entry["found"] else "no coin")
    # both sides: each coin's two query-class photos (4th and 5th) as a pair, with the fused answer
    pairs = []
    for (_, _, p4), (_, p5) in zip(catalog[3::4], queries, strict=True):
        res = rec.recognize_pair(p4, p5, top_k=3)
        pairs.append({"obverse": str(p4.relative_to(ROOT)), "reverse": str(p5.relative_to(ROOT)),
                      "top3": [[m.coin_id, m.score] for m in res.matches], "unknown": res.unknown})
        if len(pairs) == 4:
            break
    (pipe / "expected.json").write_text(json.dumps({
        "models": "models/release (onnx)", "segmenter_fingerprint": seg.meta.fingerprint,
        "embedder_fingerprint": rec.fingerprint, "threshold": rec.unknown_threshold,
        "pack": "samples.pack", "pack_sha256": pack.sha256, "queries": entries, "pairs": pairs,
    }, indent=1))
    print("wrote", pipe, file=sys.stderr)


if __name__ == "__main__":
    main()
