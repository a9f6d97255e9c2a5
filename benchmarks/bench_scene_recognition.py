"""Recognition in scenes: how often the whole phone pipeline names a coin it never trained on when the photo shows
the coin as people take it (on a table or a hand, beside other coins, a finger over the rim), and how much of what
it misses is the segmenter's doing.

    python -m benchmarks.bench_scene_recognition                        # the shipped int8 TFLite files
    python -m benchmarks.bench_scene_recognition --models models/release /tmp/candidate --scenes 600

The coins are the held-out query photos (``runs/split/query``: classes no model trained on) cut out by their
segmentation labels (``labels_dir`` of the release's segmenter config); the catalog is ``runs/split/catalog``, and
"with distractors" adds the first 3 photos of every training class (``runs/split/train``), as
``coinvision eval retrieval --distractors`` does. Scenes follow the segmenter's validation recipe
(``models/release/training/segmenter.train_config.yaml``) at ``--size-px``, composed on the held-out backgrounds:
``scenes`` is the recipe (35 % with 2-5 coins, as the model card's validation scenes), ``2-5 coins`` has them in
every scene. The coin to name is the one the largest-coin rule keeps (``SceneSynthesizer.scene_with_source``).

Per scene and models folder (``Recognizer.from_dir``, so every step and parameter is the phone's):

- ``pipeline``: the scene through the whole pipeline; a hit when the nearest catalog vector is of the coin's class;
- ``true mask``: the same crop and embedder on the scene's label mask: a segmenter that marks exactly that coin;
- ``photo``: the photo the coin was cut from, through the pipeline (the same coins as plain query photos);
- ``iou``: the pipeline's mask against the label (``bench_segmentation.mask_iou``);
- ``segmenter misses``: scenes the pipeline misses and the true mask names: what a perfect segmenter would add.

Writes ``benchmarks/results/scene_recognition.json`` and a contact sheet (JPEG) of up to 16 segmenter misses per set
beside it (the scene, the pipeline's mask in red, the label in green).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from coinvision.sdk.errors import CoinVisionError
from coinvision.sdk.evaluation import first_per_class, list_class_folder
from coinvision.sdk.images import load_image
from coinvision.sdk.recognizer import Recognizer
from tqdm import tqdm

from benchmarks.bench_segmentation import data_config, mask_iou
from benchmarks.common import MISSING_INPUTS_EXIT, ROOT, add_compare_models_options, write_result

__all__ = ["SceneSet", "labelled_queries", "main", "scene_sets", "score_models"]

log = logging.getLogger(__name__)

RELEASE_CONFIG = ROOT / "models" / "release" / "training" / "segmenter.train_config.yaml"
SPLIT = ROOT / "runs" / "split"
SCENE_SEED_OFFSET = 3_000_017  # not the segmentation benchmark's scenes: other draws of the same recipe
SHEET_TILES = 16
SIDE_BINS_PX = (96, 192)  # the coin's side (square root of its label's area): the embedder's input is 160 px


@dataclasses.dataclass(frozen=True)
class SceneSet:
    name: str
    images: list[np.ndarray]
    labels: list[np.ndarray]  # the coin the largest-coin rule keeps
    sources: list[int]  # index into the query photos it was cut from


def labelled_queries(query_dir: Path, cfg: Any) -> tuple[list[Path], list[str], list[Path]]:
    """``(photo, class, label mask)`` of every query photo with a segmentation label (the split's photos are links
    to the dataset files the label manifest names)."""
    from coinvision.trainer.seg_labels import read_label_manifest

    masks = {item.image_path.resolve(): item.mask_path
             for item in read_label_manifest(cfg.labels_dir, {Path(r).name: Path(r) for r in cfg.data_roots})}
    pairs = [(p, c, masks.get(p.resolve())) for p, c in list_class_folder(query_dir)]
    unlabelled = sum(m is None for *_, m in pairs)
    if unlabelled:
        log.warning("%d of %d query photos have no segmentation label; left out", unlabelled, len(pairs))
    kept = [(p, c, m) for p, c, m in pairs if m is not None]
    return [p for p, _, _ in kept], [c for _, c, _ in kept], [m for *_, m in kept]


def scene_sets(photos: Sequence[Path], masks: Sequence[Path], cfg: Any, size_px: int, count: int) -> list[SceneSet]:
    """The two scene sets composed from the query photos (letterboxed to ``size_px``, so coins keep detail)."""
    from coinvision.trainer.seg_labels import load_mask
    from coinvision.trainer.seg_train import letterbox_pair, split_backgrounds, val_scene_synthesizer

    coins = [letterbox_pair(load_image(p), load_mask(m), size_px) for p, m in zip(photos, masks, strict=True)]
    backgrounds = split_backgrounds(cfg)[1]
    recipe = dataclasses.replace(cfg.synth, size_px=size_px)
    recipes = {f"scenes {size_px} px": recipe,
               f"2-5 coins {size_px} px": dataclasses.replace(recipe, multi_coin_p=1.0, extra_coins_p=0.0)}
    out = []
    for k, (name, synth_cfg) in enumerate(recipes.items()):
        synth = val_scene_synthesizer(cfg, coins, backgrounds, synth_cfg, seed_offset=SCENE_SEED_OFFSET + k)
        scenes = [synth.scene_with_source(i) for i in range(count)]
        out.append(SceneSet(name, [s[0] for s in scenes], [s[2] for s in scenes], [s[3] for s in scenes]))
    return out


def _nearest_class(vectors: np.ndarray, catalog: np.ndarray, catalog_classes: np.ndarray) -> np.ndarray:
    return catalog_classes[np.argmax(vectors @ catalog.T, axis=1)]


def _side_bins(side_px: np.ndarray) -> dict[str, np.ndarray]:
    lo, hi = SIDE_BINS_PX
    return {f"< {lo} px": side_px < lo, f"{lo}-{hi} px": (side_px >= lo) & (side_px < hi), f">= {hi} px": side_px >= hi}


def _sheet(scene_set: SceneSet, predicted: Sequence[np.ndarray | None], rows: Sequence[int], out: Path) -> Path | None:
    tiles = []
    for i in rows[:SHEET_TILES]:
        tile = np.ascontiguousarray(scene_set.images[i]).copy()
        for mask, colour in ((predicted[i], (255, 0, 0)), (scene_set.labels[i], (0, 255, 0))):
            if mask is not None:
                contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(tile, contours, -1, colour, 2)
        tiles.append(cv2.resize(tile, (192, 192), interpolation=cv2.INTER_AREA))
    if not tiles:
        return None
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % 4)
    sheet = np.vstack([np.hstack(tiles[r:r + 4]) for r in range(0, len(tiles), 4)])
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return out


def score_models(models_dir: Path, runtime: str, threads: int, sets: Sequence[SceneSet], photos: Sequence[Path],
                 classes: Sequence[str], catalog: Sequence[tuple[Path, str]], distractors: Sequence[tuple[Path, str]],
                 sheet_dir: Path | None) -> list[dict[str, Any]]:
    """One row per scene set: the figures of the module docstring for the models in ``models_dir``."""
    recognizer = Recognizer.from_dir(models_dir, runtime=runtime, num_threads=threads)

    def embed_paths(items: Sequence[Path], desc: str) -> np.ndarray:
        return np.stack([recognizer.embed(load_image(p)).vector for p in tqdm(items, desc=desc, leave=False)])

    cat_vec = embed_paths([p for p, _ in catalog], "catalog")
    cat_cls = np.array([c for _, c in catalog])
    dis_vec = np.concatenate([cat_vec, embed_paths([p for p, _ in distractors], "distractors")])
    dis_cls = np.concatenate([cat_cls, [c for _, c in distractors]])
    photo_vec: dict[int, np.ndarray] = {}
    rows = []
    for scene_set in sets:
        for source in set(scene_set.sources) - photo_vec.keys():
            photo_vec[source] = recognizer.embed(load_image(photos[source])).vector
        truth = np.array([classes[s] for s in scene_set.sources])
        pipeline, masks, oracle = [], [], []
        for image, label in tqdm(zip(scene_set.images, scene_set.labels, strict=True), total=len(scene_set.images),
                                 desc=scene_set.name, leave=False):
            embedding = recognizer.embed(image)
            pipeline.append(embedding.vector)
            masks.append(embedding.segmentation.mask)
            oracle.append(recognizer.embed_crop(recognizer.coin_crop(image, label)))
        hit = _nearest_class(np.stack(pipeline), cat_vec, cat_cls) == truth
        hit_true = _nearest_class(np.stack(oracle), cat_vec, cat_cls) == truth
        hit_photo = _nearest_class(np.stack([photo_vec[s] for s in scene_set.sources]), cat_vec, cat_cls) == truth
        hit_dis = _nearest_class(np.stack(pipeline), dis_vec, dis_cls) == truth
        iou = np.array([mask_iou(m, label) for m, label in zip(masks, scene_set.labels, strict=True)])
        seg_misses = np.flatnonzero(~hit & hit_true)
        row = {"models": str(models_dir), "set": scene_set.name, "scenes": len(hit),
               "segmenter": recognizer.segmenter_meta.fingerprint, "embedder": recognizer.fingerprint,
               "recall@1": float(hit.mean()), "recall@1 true mask": float(hit_true.mean()),
               "recall@1 photo": float(hit_photo.mean()), "recall@1 with distractors": float(hit_dis.mean()),
               "iou@0.5": float(iou.mean()), "iou < 0.9": float((iou < 0.9).mean()),
               "segmenter misses": float(len(seg_misses) / len(hit)),
               "true mask misses": float((hit & ~hit_true).sum() / len(hit))}
        side = np.sqrt([label.sum() for label in scene_set.labels])
        row["by coin side"] = {
            name: {"scenes": int(pick.sum()), "recall@1": float(hit[pick].mean()),
                   "recall@1 true mask": float(hit_true[pick].mean())}
            for name, pick in _side_bins(side).items() if pick.any()}
        if sheet_dir is not None:
            slug = f"{Path(models_dir).name}_{scene_set.name.replace(' ', '_')}"
            sheet = _sheet(scene_set, masks, list(seg_misses), sheet_dir / f"scene_recognition_{slug}.jpg")
            if sheet is not None:
                row["sheet"] = str(sheet.relative_to(ROOT) if sheet.is_relative_to(ROOT) else sheet)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_compare_models_options(parser)
    parser.add_argument("--scenes", type=int, default=300, help="scenes per set (default 300)")
    parser.add_argument("--size-px", type=int, default=384, help="scene side (default 384)")
    parser.add_argument("--split", type=Path, default=SPLIT, help="materialised split (catalog/, query/, train/)")
    parser.add_argument("--data-config", type=Path, default=RELEASE_CONFIG,
                        help="segmenter config whose labels, backgrounds and scene recipe to use")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON (default benchmarks/results/scene_recognition.json)")
    parser.add_argument("--no-sheet", action="store_true", help="no contact sheet of segmenter misses")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        cfg = data_config(None, 128, args.data_config)
        photos, classes, masks = labelled_queries(args.split / "query", cfg)
        catalog = list_class_folder(args.split / "catalog")
        train = list_class_folder(args.split / "train")
    except CoinVisionError as exc:
        print(f"bench_scene_recognition: {exc}\n  it needs the materialised split (`make split`) and the segmentation "
              "labels (`make seg-labels`), both from ../shared/data", file=sys.stderr)
        return MISSING_INPUTS_EXIT
    if not photos:
        print(f"bench_scene_recognition: no query photo under {args.split / 'query'} has a segmentation label in "
              f"{cfg.labels_dir}; run `make seg-labels`", file=sys.stderr)
        return MISSING_INPUTS_EXIT
    distractors = [train[i] for i in first_per_class([c for _, c in train], 3)]
    sets = scene_sets(photos, masks, cfg, args.size_px, args.scenes)
    out = args.out or ROOT / "benchmarks" / "results" / "scene_recognition.json"
    table = []
    for models_dir in args.models:
        table += score_models(models_dir, args.runtime, args.threads, sets, photos, classes, catalog, distractors,
                              None if args.no_sheet else out.parent)
    columns = ("recall@1", "recall@1 true mask", "recall@1 photo", "recall@1 with distractors", "iou@0.5",
               "segmenter misses")
    print(f"{'models':<28} {'set':<18} " + " ".join(f"{c:>12.12}" for c in columns))
    for row in table:
        print(f"{Path(row['models']).name:<28.28} {row['set']:<18} " + " ".join(f"{row[c]:>12.4f}" for c in columns))
    results = {"query_photos": len(photos), "catalog": len(catalog), "distractors": len(distractors),
               "scene_recipe": dataclasses.asdict(cfg.synth), "size_px": args.size_px, "runtime": args.runtime}
    for row in table:
        print(f"{Path(row['models']).name:<28.28} {row['set']:<18} by coin side: " + ", ".join(
            f"{name} {b['recall@1']:.3f} / true mask {b['recall@1 true mask']:.3f} ({b['scenes']})"
            for name, b in row["by coin side"].items()))
    print(f"wrote {write_result('scene_recognition', results, table, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
