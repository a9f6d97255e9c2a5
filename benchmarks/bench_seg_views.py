"""Views for the segmenter pass that gives the answer (docs/PIPELINE_SPEC.md step 2.7, segmenter metadata
``extra.views``), and whether touching coins are cut apart first (step 2.6, ``extra.split_touching``): picked without
the held-out classes.

    python -m benchmarks.bench_seg_views                       # the shipped int8 TFLite segmenter
    python -m benchmarks.bench_seg_views --models DIR --exported segmenter.onnx --scenes 300

Every candidate runs the SDK's ``Segmenter`` with only ``views`` and ``split_touching`` replaced, so the figures are the
phone's. The data are ``bench_seg_tiles``'s: pick sets of TRAINING-class scenes at 384, 512 and 640 px (the recipe's
scenes, 2-5 coins in every scene, small coins), the held-out sets of the model card (reported, never used to pick),
and coin-free photos (the share where a coin is reported). Rule: the candidate with the highest mean IoU@0.5 over the
pick sets; within ``TIE_IOU`` of it, the one with fewer views (each view is one more segmenter call).
Writes ``benchmarks/results/seg_views.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_seg_tiles import RELEASE_CONFIG, coin_free, held_out_sets, mean_iou, pick_scenes
from benchmarks.bench_segmentation import DEFAULT_MODELS, _memoised, data_config, exported_model
from benchmarks.common import ROOT, seed_everything, write_result

__all__ = ["main", "pick"]

log = logging.getLogger(__name__)

CANDIDATES = tuple({"views": views, "split_touching": split} for split in (True, False) for views in (1, 2, 4))
TIE_IOU = 0.001


def pick(rows: Sequence[dict[str, Any]], tie_iou: float = TIE_IOU) -> dict[str, Any]:
    """The row with the highest ``pick mean``; among rows within ``tie_iou`` of it, the one with the fewest views (the
    held-out columns are not looked at)."""
    best = max(r["pick mean"] for r in rows)
    return min((r for r in rows if r["pick mean"] >= best - tie_iou), key=lambda r: (r["views"], -r["pick mean"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=str(DEFAULT_MODELS), help="folder of the exported segmenter")
    parser.add_argument("--exported", default="segmenter.tflite", help="file in --models (default the SDK's)")
    parser.add_argument("--config", default=str(RELEASE_CONFIG),
                        help="segmenter config YAML defining the split and the scene recipe (the release's)")
    parser.add_argument("--scenes", type=int, default=300, help="scenes per pick set (default 300)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/seg_views.json)")
    args = parser.parse_args(argv)
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
    print(f"data ready in {time.perf_counter() - started:.0f} s", flush=True)
    rows: list[dict[str, Any]] = []
    for candidate in CANDIDATES:
        segmenter = base.with_params(**candidate)
        row: dict[str, Any] = dict(candidate)
        row.update({f"pick: {k}": mean_iou(segmenter, v) for k, v in pick_sets.items()})
        row["pick mean"] = float(np.mean([row[f"pick: {k}"] for k in pick_sets]))
        row.update({f"held-out: {k}": mean_iou(segmenter, v) for k, v in held.items()})
        row.update({f"{k}: coin found": float(np.mean([segmenter.segment(img).found for img in v]))
                    for k, v in free.items()})
        rows.append(row)
        print(f"{candidate}: pick mean {row['pick mean']:.4f}; held-out "
              + ", ".join(f"{k} {row[f'held-out: {k}']:.4f}" for k in held), flush=True)
    clear()
    best = pick(rows)
    params = model.segmenter.params
    results = {"model": model.path, "fingerprint": model.fingerprint, "quantization": model.quantization,
               "config": str(Path(args.config).resolve().relative_to(ROOT)), "scenes_per_pick_set": args.scenes,
               "metadata": {"views": params.views, "split_touching": params.split_touching,
                            "tile_frac": params.tile_frac},
               "pick_rule": f"highest mean IoU@0.5 over the pick sets (training classes only); within {TIE_IOU} of "
                            "it, the fewest views",
               "picked": {k: best[k] for k in CANDIDATES[0]}, "rows": rows}
    path = write_result("seg_views", results, rows, args.out)
    print(f"picked {results['picked']} (pick mean {best['pick mean']:.4f}); the model's metadata says "
          f"{results['metadata']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
