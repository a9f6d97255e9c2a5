"""Tiles for a photo whose whole-photo segmenter pass finds no coin (docs/PIPELINE_SPEC.md step 2.3, segmenter
metadata ``extra.tile_frac``): which tile size, picked without the held-out classes.

    python -m benchmarks.bench_seg_tiles                       # the shipped int8 TFLite segmenter
    python -m benchmarks.bench_seg_tiles --models DIR --exported segmenter.onnx --scenes 300

Every candidate runs the SDK's ``Segmenter`` with only ``tile_frac`` replaced (absent = no tiles), so the figures are
the phone's. Three kinds of data:

- **pick**: scenes composed from photos of TRAINING classes on training backgrounds at 384, 512 and 640 px: the
  recipe of the model card's validation scenes (``synth.multi_coin_p`` 0.35), a set with 2-5 coins in every scene,
  and a set of small coins (the coin's square 1:36 to 1:144 of the scene, the recipe's smallest and below: the
  photos the tiles are for; without it every tile size from 0.6 to 0.8 scored the same to 1e-5). The shipped value
  is the candidate with the highest mean IoU@0.5 over these sets among those of at most 3 x 3 tiles (the cost cap:
  9 more segmenter calls on a photo whose first pass finds nothing), nothing else.
- **held-out** (reported, never used to pick): the segmenter's validation split as in ``bench_segmentation``: real
  photos, the hand-checked subset, synthetic and 2-5 coin scenes at 128 and 384 px.
- **coin-free**: windows of every background photo and procedural textures at 384 and 640 px; the share where the
  pipeline reports a coin (the tiles must not invent one).

Needs ``../shared/data`` and the segmentation labels (``make seg-labels``). Writes
``benchmarks/results/seg_tiles.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_segmentation import (
    DEFAULT_MODELS,
    HANDCHECKED,
    _memoised,
    data_config,
    exported_model,
    load_eval_data,
    mask_iou,
)
from benchmarks.common import ROOT, seed_everything, write_result

__all__ = ["coin_free", "held_out_sets", "main", "mean_iou", "pick", "pick_scenes", "result_header", "sweep",
           "sweep_arguments", "tiles_of"]

log = logging.getLogger(__name__)

CANDIDATES = (None, 0.34, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.3)  # tiles per side: ceil(1 / tile_frac)
MAX_TILES = 9  # the cost cap of the pick: 3 x 3
RELEASE_CONFIG = ROOT / "models" / "release" / "training" / "segmenter.train_config.yaml"
PICK_SIZES_PX = (384, 512, 640)
PICK_SEED = 777
SMALL_COVERAGE_RATIO = (36.0, 144.0)  # the small-coin pick sets: coin square : scene area


def pick_scenes(cfg: Any, count: int, *, coins_per_set: int = 400, seed: int = 11) -> dict[str, list]:
    """Scenes of training-class photos on training backgrounds: ``{set name: [(image, target mask)]}``."""
    from coinvision.sdk.images import load_image
    from coinvision.trainer.seg_labels import load_mask
    from coinvision.trainer.seg_scenes import SceneSynthesizer
    from coinvision.trainer.seg_train import letterbox_pair, split_backgrounds, split_seg_labels

    train, _ = split_seg_labels(cfg)
    rng = np.random.default_rng(seed)
    chosen = [train[i] for i in sorted(rng.choice(len(train), min(coins_per_set, len(train)), replace=False))]
    coins = [letterbox_pair(load_image(it.image_path), load_mask(it.mask_path), 2 * cfg.size_px) for it in chosen]
    backgrounds = split_backgrounds(cfg)[0]
    sets = {}
    for size in PICK_SIZES_PX:
        for name, changes in (("scenes", {}), ("2-5 coins", {"multi_coin_p": 1.0}),
                              ("small coins", {"multi_coin_p": 0.0, "coverage_ratio": SMALL_COVERAGE_RATIO})):
            recipe = dataclasses.replace(cfg.synth, size_px=size, **changes)
            synth = SceneSynthesizer(coins, backgrounds, recipe, seed=PICK_SEED)
            sets[f"{name} {size} px"] = [(image, main) for image, _, main in (synth.scene(i) for i in range(count))]
    return sets


def coin_free(cfg: Any, count: int, seed: int = 5) -> dict[str, list[np.ndarray]]:
    from coinvision.trainer.seg_scenes import crop_background, jitter_background
    from coinvision.trainer.seg_train import split_backgrounds

    train, val = split_backgrounds(cfg)
    rng = np.random.default_rng(seed)
    return {f"coin-free {size} px": [jitter_background(crop_background(train + val, size, rng, procedural_p=0.3), rng)
                                     for _ in range(count)] for size in (384, 640)}


def held_out_sets(cfg: Any) -> dict[str, list]:
    """The model card's held-out sets (``bench_segmentation``'s): ``{set name: [(image, target mask)]}``."""
    held128 = load_eval_data(cfg, 100, 1000, n_distractor=100, handchecked=HANDCHECKED)
    held384 = load_eval_data(cfg, 100, 0, synth_size_px=384, n_distractor=100, handchecked=None)
    return {"real photos": [(img, m) for _, img, m in held128.real],
            "hand-checked": [(img, m) for _, img, m in held128.handchecked],
            "synthetic 128 px": held128.synthetic, "2-5 coins 128 px": held128.distractor,
            "synthetic 384 px": held384.synthetic, "2-5 coins 384 px": held384.distractor}


def tiles_of(tile_frac: float | None) -> int:
    """Segmenter calls the tiles add (spec 2.3: an n x n grid, n = ceil(1 / tile_frac)); 0 without tiles."""
    return 0 if tile_frac is None else math.ceil(1.0 / tile_frac) ** 2


def pick(rows: Sequence[dict[str, Any]], max_tiles: int = MAX_TILES) -> dict[str, Any]:
    """The row with the highest ``pick mean`` among those of at most ``max_tiles`` tiles (the held-out columns are
    not looked at)."""
    return max((r for r in rows if tiles_of(r["tile_frac"]) <= max_tiles), key=lambda r: r["pick mean"])


def mean_iou(segmenter: Any, items: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    return float(np.mean([mask_iou(segmenter.segment(image).mask, target) for image, target in items]))


def sweep_arguments(doc: str, result_name: str, argv: list[str] | None) -> argparse.Namespace:
    """The command line every post-processing sweep over these sets shares."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=str(DEFAULT_MODELS), help="folder of the exported segmenter")
    parser.add_argument("--exported", default="segmenter.tflite", help="file in --models (default the SDK's)")
    parser.add_argument("--config", default=str(RELEASE_CONFIG),
                        help="segmenter config YAML defining the split and the scene recipe (the release's)")
    parser.add_argument("--scenes", type=int, default=300, help="scenes per pick set (default 300)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help=f"JSON path (default benchmarks/results/{result_name}.json)")
    return parser.parse_args(argv)


def sweep(args: argparse.Namespace, candidates: Sequence[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """The exported segmenter with each candidate's post-processing values (``SegmenterParams`` fields) in turn: one
    row per candidate, starting with its values, then IoU@0.5 on every pick set, their mean, every held-out set, and
    the share of coin-free photos where a coin is reported. Returns the model and the rows."""
    logging.basicConfig(level=logging.WARNING)
    seed_everything(0)
    import cv2
    from coinvision.sdk.segmenter import Segmenter

    cv2.setNumThreads(args.threads)
    model = exported_model(Path(args.models) / args.exported, args.threads)
    predict, clear = _memoised(model.segmenter.model.predict)
    base = Segmenter(dataclasses.replace(model.segmenter.model, predict=predict), model.segmenter.params)
    cfg = data_config(None, 128, Path(args.config), {"synth.multi_coin_p": 0.35})
    started = time.perf_counter()
    pick_sets = pick_scenes(cfg, args.scenes)
    held = held_out_sets(cfg)
    free = coin_free(cfg, 200)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in pick_sets.items())
    print(f"data ready in {time.perf_counter() - started:.0f} s: {sizes}", flush=True)
    rows: list[dict[str, Any]] = []
    for candidate in candidates:
        segmenter = base.with_params(**candidate)
        row: dict[str, Any] = dict(candidate)
        row.update({f"pick: {k}": mean_iou(segmenter, v) for k, v in pick_sets.items()})
        row["pick mean"] = float(np.mean([row[f"pick: {k}"] for k in pick_sets]))
        row.update({f"held-out: {k}": mean_iou(segmenter, v) for k, v in held.items()})
        row.update({f"{k}: coin found": float(np.mean([segmenter.segment(img).found for img in v]))
                    for k, v in free.items()})
        clear()
        rows.append(row)
        print(f"{candidate}: pick mean {row['pick mean']:.4f}; held-out "
              + ", ".join(f"{k} {row[f'held-out: {k}']:.4f}" for k in held), flush=True)
    return model, rows


def result_header(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """What a :func:`sweep` result says about its model and data, first in its JSON."""
    return {"model": model.path, "fingerprint": model.fingerprint, "quantization": model.quantization,
            "config": str(Path(args.config).resolve().relative_to(ROOT)), "scenes_per_pick_set": args.scenes}


def main(argv: list[str] | None = None) -> int:
    args = sweep_arguments(__doc__, "seg_tiles", argv)
    model, rows = sweep(args, [{"tile_frac": tile_frac} for tile_frac in CANDIDATES])
    for row in rows:
        row["tiles"] = tiles_of(row["tile_frac"])
    best = pick(rows)
    shipped = model.segmenter.params.tile_frac
    results = {**result_header(model, args),
               "pick_rule": f"highest mean IoU@0.5 over the pick sets (training classes only) among candidates of at "
                            f"most {MAX_TILES} tiles",
               "picked": best["tile_frac"], "metadata_tile_frac": shipped, "rows": rows}
    path = write_result("seg_tiles", results, rows, args.out)
    print(f"picked tile_frac {best['tile_frac']} (pick mean {best['pick mean']:.4f}); the model's metadata says "
          f"{shipped}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
