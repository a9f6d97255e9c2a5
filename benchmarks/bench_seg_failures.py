"""Where the segmentation IoU goes: each validation image's final mask (the SDK's two-pass pipeline through an
exported segmenter, as the phone computes it) sorted by what went wrong, the share of the mean IoU each kind of
error costs, the outline's bias in pixels, and a contact sheet of the worst images.

    python -m benchmarks.bench_seg_failures                       # release int8 TFLite, 300 scenes a set at 384 px
    python -m benchmarks.bench_seg_failures --models DIR --runtime onnx --scenes 100 --synth-size-px 128

Kinds, per image at the metadata's threshold:

- ``ok``: IoU >= 0.9; what it still costs is the outline (a rim left out or background taken in);
- ``no coin``: no mask, while the label holds a coin;
- ``other coin``: IoU < 0.2 with a mask: the pipeline kept another coin (or something else) instead;
- ``part missed`` / ``other coins' pixels`` / ``background``: 0.2 <= IoU < 0.9, named by the largest of the label's
  pixels the mask misses, the mask's pixels on other coins of the scene, and its pixels on background.

Deficit share of a kind: the sum of ``1 - IoU`` over its images divided by all images, so the shares of a set add up to
``1 - mean IoU``. Outline bias of an ``ok`` image: ``(mask area - label area) / label perimeter``, in pixels of the
image: below 0 the mask lies inside the label's outline (a clipped rim), above 0 outside it; the unit of
``bench_mask_sensitivity``'s outline offsets, which say what such a bias costs recognition.

Data as ``bench_segmentation``'s (its ``load_eval_data``): the synthetic and 2-5 coin validation scenes of the
release's training config (``--data-config``, scene mix ``synth.multi_coin_p=0.35`` as the model card's tables), the
real validation photos and the hand-checked subset. Real photos have no mask of their other coins, so a mask off
their label counts as background. Writes ``benchmarks/results/seg_failures.json`` (every image's row) and the contact
sheet beside it (``.jpg``, photos: per set, its worst images, then the ``ok`` images with the most negative outline
bias; label outline magenta, mask outline green).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_segmentation import HANDCHECKED, SAMPLE_DATA, data_config, load_eval_data, mask_iou
from benchmarks.common import RELEASE_MODELS, ROOT, seed_everything, write_result

OK_IOU = 0.9
WRONG_IOU = 0.2
KINDS = ("ok", "no coin", "other coin", "part missed", "other coins' pixels", "background")
RELEASE_DATA_CONFIG = ROOT / "models" / "release" / "training" / "segmenter.train_config.yaml"
TILE_PX = 160


@dataclass(frozen=True)
class ImageResult:
    """One image's final mask against its label (pixel counts at the image's own size)."""

    set: str
    index: int
    iou: float
    kind: str
    passes: int
    label_px: int
    missed_px: int  # label pixels outside the mask
    other_coin_px: int  # mask pixels on another coin of the scene
    background_px: int  # mask pixels on no coin
    bias_px: float | None  # outline bias of an ``ok`` image, else None


def classify(iou: float, *, has_mask: bool, missed_px: int, other_coin_px: int, background_px: int) -> str:
    """The kind of an image's result (see the module docstring)."""
    if iou >= OK_IOU:
        return "ok"
    if not has_mask:
        return "no coin"
    if iou < WRONG_IOU:
        return "other coin"
    worst = max(missed_px, other_coin_px, background_px)
    return "part missed" if worst == missed_px else ("other coins' pixels" if worst == other_coin_px else "background")


def outline_bias_px(mask: np.ndarray, label: np.ndarray) -> float:
    """``(mask area - label area) / label perimeter``: how far, on average, the mask's outline lies outside (> 0) or
    inside (< 0) the label's, in pixels."""
    import cv2

    contours, _ = cv2.findContours(label.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, closed=True) for c in contours)
    return float((int(mask.sum()) - int(label.sum())) / perimeter) if perimeter else 0.0


def score_image(set_name: str, index: int, mask: np.ndarray | None, label: np.ndarray, all_coins: np.ndarray,
                passes: int) -> ImageResult:
    """``all_coins``: every coin's pixels in the image (the label alone where the others are not known)."""
    iou = mask_iou(mask, label)
    label_px = int(label.sum())
    if mask is None:
        missed, other, background = label_px, 0, 0
    else:
        missed = int((label & ~mask).sum())
        other = int((mask & all_coins & ~label).sum())
        background = int((mask & ~all_coins & ~label).sum())
    kind = classify(iou, has_mask=mask is not None, missed_px=missed, other_coin_px=other, background_px=background)
    bias = outline_bias_px(mask, label) if kind == "ok" and mask is not None else None
    return ImageResult(set_name, index, iou, kind, passes, label_px, missed, other, background, bias)


def summarise(rows: list[ImageResult]) -> dict[str, Any]:
    """Mean IoU, each kind's count and deficit share, and the ``ok`` images' outline bias."""
    n = len(rows)
    ious = np.array([r.iou for r in rows])
    kinds = {k: {"images": sum(r.kind == k for r in rows),
                 "deficit_share": float(sum(1.0 - r.iou for r in rows if r.kind == k) / n) if n else 0.0}
             for k in KINDS}
    bias = np.array([r.bias_px for r in rows if r.bias_px is not None])
    return {
        "images": n, "mean_iou": float(ious.mean()) if n else float("nan"),
        "two_pass_share": float(np.mean([r.passes == 2 for r in rows])) if n else float("nan"),
        "kinds": kinds,
        "ok_bias_px": {"mean": float(bias.mean()), "median": float(np.median(bias)),
                       "share_below_-1px": float(np.mean(bias < -1.0)),
                       "share_above_1px": float(np.mean(bias > 1.0))} if bias.size else None,
    }


# ------------------------------------------------------------------------------------------------ contact sheet


def _tile(image: np.ndarray, label: np.ndarray, mask: np.ndarray | None, caption: str) -> np.ndarray:
    """The image cut around label and mask, both outlined, at ``TILE_PX``, with a caption."""
    import cv2

    both = label | mask if mask is not None else label
    ys, xs = np.nonzero(both) if both.any() else (np.array([0, image.shape[0] - 1]), np.array([0, image.shape[1] - 1]))
    side = max(int(ys.max() - ys.min()), int(xs.max() - xs.min()), 16) * 1.15
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    y0, x0 = max(0, int(cy - side / 2)), max(0, int(cx - side / 2))
    y1, x1 = min(image.shape[0], int(cy + side / 2) + 1), min(image.shape[1], int(cx + side / 2) + 1)
    scale = TILE_PX / max(y1 - y0, x1 - x0)
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    tile = np.zeros((TILE_PX, TILE_PX, 3), np.uint8)
    view = cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), size, interpolation=cv2.INTER_AREA)
    for outline, colour in ((label, (255, 0, 255)), (mask, (0, 255, 0))):
        if outline is None:
            continue
        part = cv2.resize(outline[y0:y1, x0:x1].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(part, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(view, contours, -1, colour, 1)
    tile[: size[1], : size[0]] = view
    cv2.putText(tile, caption, (3, TILE_PX - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 0), 1, cv2.LINE_AA)
    return tile


def contact_sheet(picks: list[tuple[str, list[tuple[np.ndarray, np.ndarray, np.ndarray | None, str]]]],
                  out_jpg: Path, per_row: int) -> None:
    """One row per ``(title, tiles)``: the title on the left, the tiles after it."""
    import cv2

    rows = []
    for title, tiles in picks:
        row = np.zeros((TILE_PX, 150 + per_row * TILE_PX, 3), np.uint8)
        for k, line in enumerate(title.split("\n")):
            cv2.putText(row, line, (4, 20 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        for j, (image, label, mask, caption) in enumerate(tiles[:per_row]):
            row[:, 150 + j * TILE_PX : 150 + (j + 1) * TILE_PX] = _tile(image, label, mask, caption)
        rows.append(row)
    out_jpg.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_jpg), np.concatenate(rows, 0)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])


# --------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=RELEASE_MODELS, help="models folder (default models/release)")
    parser.add_argument("--runtime", default="tflite", choices=("tflite", "onnx"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scenes", type=int, default=300, help="synthetic and 2-5 coin scenes, each (default 300)")
    parser.add_argument("--synth-size-px", type=int, default=384, help="scene size (default 384)")
    parser.add_argument("--real", type=int, default=200, help="real validation photos (default 200, as the card)")
    parser.add_argument("--data-config", type=Path, default=RELEASE_DATA_CONFIG,
                        help="segmenter config YAML that defines the validation data (default the release's)")
    parser.add_argument("--data-set", nargs="*", default=["synth.multi_coin_p=0.35"], metavar="KEY=VALUE",
                        help="overrides of --data-config (default synth.multi_coin_p=0.35, the model card's scenes)")
    parser.add_argument("--handchecked", default=str(HANDCHECKED), help="hand-check CSV (dataset,file,verdict)")
    parser.add_argument("--sample-data", action="store_true", help="use the bundled sample even if ../shared exists")
    parser.add_argument("--sample-root", type=Path, default=SAMPLE_DATA, help="the bundled sample (fallback data)")
    parser.add_argument("--worst", type=int, default=8, help="images per contact-sheet row (default 8)")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/seg_failures.json; the contact sheet "
                                      "beside it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    seed_everything(0)
    from coinvision.sdk.segmenter import Segmenter
    from coinvision.trainer.config_io import parse_overrides

    segmenter = Segmenter.from_dir(args.models, runtime=args.runtime, num_threads=args.threads)
    cfg = data_config(None, segmenter.params.size_px, args.data_config, parse_overrides(args.data_set))
    data = load_eval_data(cfg, args.scenes, args.real, synth_size_px=args.synth_size_px, sample_root=args.sample_root,
                          force_sample=args.sample_data, n_distractor=args.scenes, handchecked=args.handchecked)
    for note in data.notes:
        print(f"note: {note}", flush=True)
    sets = {
        f"synthetic {data.synth_size_px} px": [(im, lab, full) for (im, lab), full in
                                               zip(data.synthetic, data.synthetic_all_coins, strict=True)],
        f"2-5 coins {data.synth_size_px} px": [(im, lab, full) for (im, lab), full in
                                               zip(data.distractor, data.distractor_all_coins, strict=True)],
        "real photos": [(im, lab, lab) for _, im, lab in data.real],
        "hand-checked": [(im, lab, lab) for _, im, lab in data.handchecked],
    }
    from tqdm import tqdm

    results: dict[str, Any] = {"models": str(args.models), "runtime": args.runtime,
                               "fingerprint": segmenter.meta.fingerprint, "params": asdict(segmenter.params),
                               "data_source": data.source, "data_notes": data.notes, "sets": {}}
    table: list[dict[str, Any]] = []
    sheet: list[tuple[str, list[Any]]] = []
    for name, items in sets.items():
        if not items:
            continue
        rows, masks = [], []
        for i, (image, label, all_coins) in enumerate(tqdm(items, desc=name, unit="img", leave=False)):
            seg = segmenter.segment(image)
            rows.append(score_image(name, i, seg.mask, label, all_coins, seg.passes))
            masks.append(seg.mask)
        summary = summarise(rows)
        results["sets"][name] = {**summary, "rows": [asdict(r) for r in rows]}
        bias = summary["ok_bias_px"]
        print(f"{name}: {summary['images']} images, mean IoU {summary['mean_iou']:.4f}, two passes "
              f"{summary['two_pass_share']:.2f}" + (f"; ok outline bias mean {bias['mean']:+.2f} px, below -1 px "
                                                    f"{bias['share_below_-1px']:.2f}" if bias else ""), flush=True)
        for kind, k in summary["kinds"].items():
            if k["images"]:
                print(f"  {kind:<20} {k['images']:4d} images  costs {k['deficit_share']:.4f} of the mean IoU")
            table.append({"set": name, "kind": kind, "images": k["images"], "deficit share": k["deficit_share"],
                          "mean IoU": summary["mean_iou"]})
        worst = sorted(range(len(rows)), key=lambda j: rows[j].iou)[: args.worst]
        sheet.append((f"{name}\nworst IoU", [(items[j][0], items[j][1], masks[j], f"{rows[j].iou:.2f} {rows[j].kind}")
                                             for j in worst]))
        clipped = sorted((j for j in range(len(rows)) if rows[j].bias_px is not None),
                         key=lambda j: rows[j].bias_px)[: args.worst]
        sheet.append((f"{name}\nok, most inside\nthe label", [(items[j][0], items[j][1], masks[j],
                                                              f"{rows[j].iou:.2f} {rows[j].bias_px:+.1f}px")
                                                             for j in clipped]))
    path = write_result("seg_failures", results, table, args.out)
    contact_sheet(sheet, path.with_suffix(".jpg"), args.worst)
    print(f"wrote {path} and {path.with_suffix('.jpg')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
