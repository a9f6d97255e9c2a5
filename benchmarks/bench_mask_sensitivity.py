"""Outline sensitivity: how much recognition moves when the segmenter's coin outline moves by a pixel or two.

    python -m benchmarks.bench_mask_sensitivity                                   # the shipped int8 TFLite files
    python -m benchmarks.bench_mask_sensitivity --models models/release /tmp/candidate --offsets -2 -1 1 2
    python -m benchmarks.bench_mask_sensitivity --embedder-checkpoints runs/embedder/jit1/best.pt   # + a trained one

Why: the embedder sees the coin cut out by the segmenter's mask (spec step 3), and a new segmenter, or another runtime
of the same one, draws the outline a pixel inside or outside where the shipped one did. Every catalog photo
(``runs/split/catalog``) and held-out query photo (``runs/split/query``; with ``--trained-coins`` the first 3 training
photos of each training class and their held-out ``val_seen`` photos instead) is segmented once by each models
folder's pipeline; its mask is then grown (offset > 0) or shrunk (offset < 0) by ``|offset|`` pixels
(``trainer.emb_data.move_outline``: OpenCV dilate / erode, 3 × 3 square kernel, ``|offset|`` iterations, as the
embedder trainer's ``outline_jitter_px`` moves its training crops), and the crop and vector are made from it by the
pipeline's own steps (``Recognizer.coin_crop``, ``embed_crop``). Per models folder and offset:

- ``recall@1 both``: catalog and queries cut by the moved outline (a segmenter that draws every outline that much
  larger or smaller);
- ``recall@1 queries``: only the queries moved, the catalog as the pipeline cuts it (a phone whose outline differs
  from the server's that built the catalog);
- ``cosine``: each photo's vector against its own unmoved vector (mean, 10th percentile, minimum).

A photo whose mask an erosion would empty, or with no coin found, keeps its unmoved vector. Writes
``benchmarks/results/mask_sensitivity.json`` and a plot of Recall@1 against the offset beside it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from coinvision.sdk.evaluation import first_per_class, list_class_folder
from coinvision.sdk.images import load_image
from coinvision.sdk.recognizer import Recognizer
from coinvision.trainer.emb_data import move_outline
from tqdm import tqdm

from benchmarks.common import MISSING_INPUTS_EXIT, ROOT, add_compare_models_options, write_result

__all__ = ["main", "outline_vectors", "score_offsets"]

SPLIT = ROOT / "runs" / "split"
DEFAULT_OFFSETS_PX = (-2, -1, 1, 2)
TRAINED_CATALOG_PER_CLASS = 3


def add_split_options(parser: argparse.ArgumentParser) -> None:
    """``--split`` and ``--trained-coins``: which photos :func:`split_photos` reads."""
    parser.add_argument("--split", type=Path, default=SPLIT, help="materialised split (catalog/, query/)")
    parser.add_argument("--trained-coins", action="store_true",
                        help="the embedder's TRAINING classes instead: their first 3 train/ photos as the catalog, "
                             "val_seen/ as the queries")


def split_photos(split: Path, *, trained_coins: bool, tool: str
                 ) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]] | None:
    """``(catalog, queries)`` as ``(path, class)``: the held-out classes' catalog/ and query/, or with
    ``trained_coins`` the training classes' first 3 train/ photos and val_seen/; ``None`` (said on stderr) when the
    materialised split is not there."""
    catalog_dir, query_dir = ((split / "train", split / "val_seen") if trained_coins
                              else (split / "catalog", split / "query"))
    if not (catalog_dir.is_dir() and query_dir.is_dir()):
        print(f"{tool}: {catalog_dir} or {query_dir} does not exist; it needs the materialised split "
              "(`make split`, from ../shared/data)", file=sys.stderr)
        return None
    catalog, queries = list_class_folder(catalog_dir), list_class_folder(query_dir)
    if trained_coins:
        catalog = [catalog[i] for i in first_per_class([c for _, c in catalog], TRAINED_CATALOG_PER_CLASS)]
    return catalog, queries


def outline_vectors(recognizer: Recognizer, photos: Sequence[Path], offsets_px: Sequence[int],
                    desc: str = "photos") -> tuple[np.ndarray, int]:
    """``(vectors, kept)``: ``vectors[i, j]`` is photo ``i`` embedded with its pipeline mask moved by
    ``offsets_px[j]``; ``kept`` counts photos left unmoved (no coin found, or an erosion that would empty the mask)."""
    out, kept = [], 0
    for path in tqdm(photos, desc=desc, unit="img", leave=False):
        rgb = load_image(path)
        mask = recognizer.segmenter.segment(rgb).mask
        row, unmoved = [], False
        for offset in offsets_px:
            moved = None if mask is None else move_outline(mask, offset)
            if moved is not None and not moved.any():
                moved = mask
            unmoved |= moved is mask and offset != 0
            row.append(recognizer.embed_crop(recognizer.coin_crop(rgb, moved)))
        kept += unmoved
        out.append(row)
    return np.asarray(out, np.float32), kept


def top1_hits(catalog: np.ndarray, catalog_classes: np.ndarray, queries: np.ndarray,
              query_classes: np.ndarray) -> np.ndarray:
    """Per query: is the class of its nearest catalog vector (cosine of unit vectors) its own?"""
    return catalog_classes[np.argmax(queries @ catalog.T, axis=1)] == query_classes


def _recall_at_1(catalog: np.ndarray, catalog_classes: np.ndarray, queries: np.ndarray,
                 query_classes: np.ndarray) -> float:
    return float(np.mean(top1_hits(catalog, catalog_classes, queries, query_classes)))


def score_offsets(catalog: np.ndarray, catalog_classes: Sequence[str], queries: np.ndarray,
                  query_classes: Sequence[str], offsets_px: Sequence[int]) -> list[dict[str, Any]]:
    """One row per offset from :func:`outline_vectors` arrays; ``offsets_px`` must hold 0 (the unmoved outline)."""
    base = list(offsets_px).index(0)
    c_cls, q_cls = np.asarray(catalog_classes), np.asarray(query_classes)
    rows = []
    for j, offset in enumerate(offsets_px):
        cos = np.concatenate([np.sum(v[:, j] * v[:, base], axis=1) for v in (catalog, queries)])
        rows.append({
            "offset_px": int(offset),
            "recall@1 both": _recall_at_1(catalog[:, j], c_cls, queries[:, j], q_cls),
            "recall@1 queries": _recall_at_1(catalog[:, base], c_cls, queries[:, j], q_cls),
            "cosine mean": float(cos.mean()), "cosine p10": float(np.percentile(cos, 10)),
            "cosine min": float(cos.min()),
        })
    return rows


def _short(name: str) -> str:
    """``runs/embedder/jit1/best.pt`` -> ``jit1/best.pt``: the last two parts name a folder or a checkpoint."""
    return "/".join(Path(name).parts[-2:])


def _plot(table: list[dict[str, Any]], out_png: Path) -> None:
    from coinvision.trainer.plotting import png_figure

    with png_figure(out_png, figsize=(6, 4)) as (_, ax):
        for k, models in enumerate(dict.fromkeys(row["models"] for row in table)):
            rows = [r for r in table if r["models"] == models]
            x, name, color = [r["offset_px"] for r in rows], _short(models), f"C{k}"
            ax.plot(x, [r["recall@1 both"] for r in rows], marker="o", color=color,
                    label=f"{name}: catalog and queries moved")
            ax.plot(x, [r["recall@1 queries"] for r in rows], marker="s", ls="--", color=color,
                    label=f"{name}: queries moved")
        ax.set(xlabel="outline moved (px; < 0 shrunk, > 0 grown)", ylabel="unseen-coin Recall@1",
               title="Recognition against the segmenter's outline")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)


def _recognizers(args: argparse.Namespace) -> Iterator[tuple[str, Recognizer]]:
    """``(name, recognizer)``: each ``--models`` folder, then each ``--embedder-checkpoints`` file behind the first
    folder's segmenter. One at a time, so only one set of models is loaded."""
    for models_dir in args.models:
        yield str(models_dir), Recognizer.from_dir(models_dir, runtime=args.runtime, num_threads=args.threads)
    if args.embedder_checkpoints:
        from coinvision.sdk.segmenter import Segmenter
        from coinvision.trainer.torch_runtime import load_torch_embedder_model

        segmenter = Segmenter.from_dir(args.models[0], runtime=args.runtime, num_threads=args.threads)
        for ckpt in args.embedder_checkpoints:
            yield str(ckpt), Recognizer(segmenter, load_torch_embedder_model(ckpt))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_compare_models_options(parser)
    parser.add_argument("--offsets", type=int, nargs="+", default=list(DEFAULT_OFFSETS_PX), metavar="PX",
                        help="outline moves in pixels (default -2 -1 1 2; 0 is always added)")
    add_split_options(parser)
    parser.add_argument("--embedder-checkpoints", type=Path, nargs="*", default=[], metavar="CKPT",
                        help="trainer embedder checkpoints to measure too, each behind the first --models folder's "
                             "segmenter (PyTorch, float32)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON (default benchmarks/results/mask_sensitivity.json; the plot beside it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    photos = split_photos(args.split, trained_coins=args.trained_coins, tool="bench_mask_sensitivity")
    if photos is None:
        return MISSING_INPUTS_EXIT
    catalog, queries = photos
    offsets = sorted({0, *args.offsets})
    table = []
    for name, recognizer in _recognizers(args):
        cat_vectors, cat_kept = outline_vectors(recognizer, [p for p, _ in catalog], offsets, "catalog")
        query_vectors, query_kept = outline_vectors(recognizer, [p for p, _ in queries], offsets, "queries")
        for row in score_offsets(cat_vectors, [c for _, c in catalog], query_vectors, [c for _, c in queries],
                                 offsets):
            table.append({"models": name, **row, "photos unmoved": cat_kept + query_kept})
    print(f"{'models':<28} {'offset px':>9} {'R@1 both':>9} {'R@1 queries':>11} {'cos mean':>9} {'cos p10':>8} "
          f"{'cos min':>8}")
    for row in table:
        print(f"{_short(row['models']):<28.28} {row['offset_px']:>9d} {row['recall@1 both']:>9.4f} "
              f"{row['recall@1 queries']:>11.4f} {row['cosine mean']:>9.4f} {row['cosine p10']:>8.4f} "
              f"{row['cosine min']:>8.4f}")
    out = args.out or ROOT / "benchmarks" / "results" / "mask_sensitivity.json"
    results = {"catalog": len(catalog), "queries": len(queries),
               "classes": "trained" if args.trained_coins else "held-out", "offsets_px": offsets,
               "runtime": args.runtime, "kernel": "3x3 square, |offset| iterations"}
    path = write_result("mask_sensitivity", results, table, out)
    _plot(table, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
