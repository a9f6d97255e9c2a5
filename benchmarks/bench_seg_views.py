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

import logging
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks.bench_seg_tiles import result_header, sweep, sweep_arguments
from benchmarks.common import write_result

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
    args = sweep_arguments(__doc__, "seg_views", argv)
    model, rows = sweep(args, CANDIDATES)
    best = pick(rows)
    params = model.segmenter.params
    results = {**result_header(model, args),
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
