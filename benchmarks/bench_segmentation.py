"""Segmentation quality: IoU@0.3 / IoU@0.5 of the coin mask, one pass vs two passes, for the PyTorch checkpoint
and every exported segmenter, exactly as the phone computes it.

    python -m benchmarks.bench_segmentation --quick     # 100 synthetic scenes + 100 real photos
    python -m benchmarks.bench_segmentation             # 500 synthetic scenes + the whole real validation set
    python -m benchmarks.bench_segmentation --checkpoint runs/segmenter/mnv2/best.pt --models models/release
    python -m benchmarks.bench_segmentation --quick --checkpoint runs/segmenter/v2/best.pt --exported segmenter.tflite \
        --distractor 100 --split-touching both     # v2 vs the shipped int8 file, 2-5 coin scenes, touching split
    python -m benchmarks.bench_segmentation --quick --checkpoint B.pt --data-checkpoint A.pt --exported  # A's scenes

Every image goes through the SDK's ``Segmenter`` (``coinvision.sdk.segmenter``; PyTorch checkpoints through
``trainer.torch_runtime.torch_segmenter``) at its ORIGINAL resolution (letterbox,
model, unletterbox, largest component, second pass on the square crop) and the final mask is compared with the
label at that resolution. IoU@t means the probability map thresholded at ``t``; per-image IoU is averaged (an
image where both masks are empty scores 1, a missed coin 0). One pass is the first pass's largest component.

Data: the segmenter's own validation split (``trainer.seg_train.split_seg_labels``: auto-labelled photos of
classes held out from training, ``runs/seg_labels`` + ``../shared/data``) and its synthetic validation scenes
(``val_scene_synthesizer`` over those photos and unseen backgrounds; the target is the main coin's mask, since
the pipeline keeps one component). Without the shared data or labels it falls back to the bundled
``examples/sample_coins`` auto-labelled with ``trainer.seg_labels.auto_label`` (photos the segmenter may have
trained on: recorded in the JSON).

Two more sets (v2): ``distractor`` - validation scenes that all hold 2-5 coins (touching, overlapping or apart;
``SynthConfig.multi_coin_p = 1``), the target being the largest coin; ``handchecked`` - the real validation photos
whose label was accepted by eye on a contact sheet (``--handchecked``, a CSV ``dataset,file,verdict,...``; rows
with verdict ``accept``). ``--split-touching on|both`` also runs the post-processing that cuts a component into
touching coins before keeping the largest (``coinvision.sdk.segmenter.split_touching_coins``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from coinvision.sdk.segmenter import Segmenter

from benchmarks.common import ROOT, release_checkpoint, seed_everything, write_result

__all__ = [
    "DESIGN_REFERENCE",
    "EvalData",
    "SegModel",
    "discover_exported",
    "evaluate_model",
    "exported_model",
    "load_eval_data",
    "main",
    "mask_iou",
    "torch_model",
]

log = logging.getLogger(__name__)

THRESHOLDS = (0.3, 0.5)
DESIGN_REFERENCE = {"iou@0.3": 0.976, "iou@0.5": 0.960}
DEFAULT_MODELS = ROOT / "models" / "release"
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE_DATA = ROOT / "examples" / "sample_coins"
HANDCHECKED = ROOT / "benchmarks" / "results" / "seg_handcheck.csv"
DISTRACTOR_SEED_OFFSET = 2_000_003


@dataclass(frozen=True)
class SegModel:
    """A segmenter under test: the SDK's ``Segmenter`` (model + post-processing values from its metadata) and
    where it came from."""

    name: str
    runtime: str  # "torch" | "onnx" | "tflite"
    path: str
    fingerprint: str
    quantization: str
    segmenter: Segmenter

    @property
    def size_px(self) -> int:
        return self.segmenter.params.size_px

    @property
    def margin_frac(self) -> float:
        return self.segmenter.params.margin_frac

    @property
    def split_touching(self) -> bool:
        return self.segmenter.params.split_touching

    def with_split_touching(self, split: bool) -> SegModel:
        return dataclasses.replace(self, name=f"{self.name} {'+' if split else '-'}split",
                                   segmenter=self.segmenter.with_params(split_touching=split))


@dataclass
class EvalData:
    source: str  # where the images come from, for the JSON
    synthetic: list[tuple[np.ndarray, np.ndarray]]  # (scene RGB, main coin mask)
    real: list[tuple[str, np.ndarray, np.ndarray]]  # (path, photo RGB at original size, mask)
    synth_size_px: int
    notes: list[str]
    distractor: list[tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)  # 2-5 coin scenes
    handchecked: list[tuple[str, np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)
    # every coin's mask of each scene, in the order of ``synthetic`` / ``distractor`` (what a mask that is not the
    # main coin lies on: benchmarks.bench_seg_failures)
    synthetic_all_coins: list[np.ndarray] = dataclasses.field(default_factory=list)
    distractor_all_coins: list[np.ndarray] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------------------------------------- models


def torch_model(checkpoint: str | Path, num_threads: int = 1) -> SegModel:
    """A PyTorch checkpoint through the one torch pipeline (``trainer.torch_runtime.torch_segmenter``)."""
    from coinvision.trainer.torch_runtime import torch_segmenter

    segmenter = torch_segmenter(checkpoint, num_threads)
    return SegModel(f"torch {_rel(checkpoint)}", "torch", _rel(checkpoint), segmenter.meta.fingerprint, "fp32",
                    segmenter)


def exported_model(path: str | Path, num_threads: int = 1) -> SegModel:
    """An exported segmenter run by the SDK's runtime (what the phone runs), metadata from its sidecar."""
    from coinvision.sdk.runtimes import load_model

    segmenter = Segmenter(load_model(path, num_threads))
    meta = segmenter.meta
    runtime = meta.runtime_format or Path(path).suffix[1:]
    return SegModel(f"{runtime} {Path(path).name}", runtime, _rel(path), meta.fingerprint, meta.quantization,
                    segmenter)


def discover_exported(models_dir: str | Path) -> list[Path]:
    """``segmenter.onnx``, ``segmenter.tflite`` and the quantized ``segmenter.<q>.tflite`` variants present."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    fixed = [models_dir / "segmenter.onnx", models_dir / "segmenter.tflite"]
    variants = sorted(p for p in models_dir.glob("segmenter.*.tflite"))
    return [p for p in fixed if p.is_file()] + variants


def check_model(model: SegModel, image: np.ndarray) -> None:
    """Correctness before use: the predictor returns a finite probability map of the model's size."""
    from coinvision.sdk.preprocess import letterbox

    square, _ = letterbox(image, model.size_px, model.segmenter.params.pad_value)
    prob = np.asarray(model.segmenter.probability(square))
    if prob.shape != (model.size_px, model.size_px) or not np.all(np.isfinite(prob)) or prob.min() < 0 or \
            prob.max() > 1:
        raise RuntimeError(f"{model.name}: output shape {prob.shape}, range [{prob.min()}, {prob.max()}] is not a "
                           f"{model.size_px}x{model.size_px} probability map; nothing was evaluated")


# --------------------------------------------------------------------------------------------------- data


def _resolve(path: str | None) -> str | None:
    if path is None:
        return None
    p = Path(path)
    return str(p if p.is_absolute() else ROOT / p)


def data_config(checkpoint: Path | None, size_px: int, yaml_path: Path | None = None,
                overrides: dict[str, Any] | None = None):
    """The segmenter config whose validation split to use: the checkpoint's, or a config YAML's (e.g. the release's
    ``models/release/training/segmenter.train_config.yaml``, for a clone without the checkpoint), with ``overrides``;
    else the defaults on ../shared."""
    from coinvision.trainer.config_io import resolve_config
    from coinvision.trainer.seg_config import SegmenterConfig

    if yaml_path is not None:
        cfg = resolve_config(SegmenterConfig, yaml_path, {**(overrides or {}), "pretrained_path": None})
    elif checkpoint is not None:
        from coinvision.trainer.checkpoint import load_checkpoint

        cfg = resolve_config(SegmenterConfig,
                             overrides={**load_checkpoint(checkpoint).config, "pretrained_path": None})
    else:
        cfg = SegmenterConfig(size_px=size_px, data_roots=(str(SHARED_DATA / "coins211"),
                                                           str(SHARED_DATA / "euro_phone")),
                              backgrounds_root=str(SHARED_DATA / "backgrounds"))
    return dataclasses.replace(
        cfg, data_roots=tuple(_resolve(r) for r in cfg.data_roots), backgrounds_root=_resolve(cfg.backgrounds_root),
        labels_dir=_resolve(cfg.labels_dir), split_file=_resolve(cfg.split_file))


def _sample(items: Sequence[Any], count: int | None, seed: int) -> list[Any]:
    if count is None or count >= len(items):
        return list(items)
    keep = np.random.default_rng(seed).choice(len(items), size=count, replace=False)
    return [items[i] for i in sorted(keep)]


def _shared_split(cfg) -> tuple[list[Any], list[np.ndarray], str]:
    from coinvision.trainer.seg_train import split_backgrounds, split_seg_labels

    _, val = split_seg_labels(cfg)
    if not val:
        raise FileNotFoundError("no labelled photo of a held-out class")
    return val, split_backgrounds(cfg)[1], f"validation split of {', '.join(Path(r).name for r in cfg.data_roots)}"


def _sample_fallback(sample_root: Path) -> tuple[list[Any], list[np.ndarray], str]:
    """Every bundled sample photo that ``auto_label`` labels, masks written to a temporary folder."""
    import tempfile

    import cv2
    from coinvision.sdk.images import load_image
    from coinvision.trainer.data import list_backgrounds, load_dataset
    from coinvision.trainer.seg_labels import LabelledImage, auto_label

    out = Path(tempfile.mkdtemp(prefix="bench_seg_labels_"))
    items = []
    for name in ("coins211", "euro_phone"):
        ds = load_dataset(sample_root / name, verify_images=False)
        for img in ds.images:
            label = auto_label(load_image(img.path))
            if label.mask is None:
                continue
            mask_path = out / name / f"{img.path.parent.name}_{img.path.stem}.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(mask_path), label.mask.astype(np.uint8) * 255)
            items.append(LabelledImage(name, img.path.name, img.path, mask_path, label.method, label.score))
    backgrounds = [load_image(p) for p in list_backgrounds(sample_root / "backgrounds")]
    return items, backgrounds, f"examples/sample_coins auto-labelled ({len(items)} photos)"


def read_handchecked(path: str | Path) -> set[tuple[str, str]]:
    """``(dataset, file)`` of the rows of a hand-check CSV whose ``verdict`` is ``accept``."""
    import csv

    with Path(path).open(newline="", encoding="utf-8") as fh:
        return {(row["dataset"], row["file"]) for row in csv.DictReader(fh) if row["verdict"].strip() == "accept"}


def load_eval_data(cfg, n_synthetic: int, n_real: int | None, *, synth_size_px: int | None = None,
                   sample_root: Path = SAMPLE_DATA, force_sample: bool = False, n_distractor: int = 0,
                   handchecked: str | Path | None = None) -> EvalData:
    """Real validation photos at original size and synthetic validation scenes (see the module docstring)."""
    from coinvision.sdk.errors import CoinVisionError
    from coinvision.sdk.images import load_image
    from coinvision.trainer.seg_labels import load_mask
    from coinvision.trainer.seg_train import letterbox_pair, val_scene_synthesizer

    notes: list[str] = []
    try:
        if force_sample:
            raise FileNotFoundError("--sample-data given")
        items, backgrounds, source = _shared_split(cfg)
    except (CoinVisionError, FileNotFoundError) as exc:
        notes.append(f"shared validation data unavailable ({exc}); fell back to the bundled sample, whose photos "
                     "the segmenter may have seen in training")
        items, backgrounds, source = _sample_fallback(sample_root)
    # the synthesizer gets every validation coin (as in training), at 2x model resolution like training
    coins = [letterbox_pair(load_image(it.image_path), load_mask(it.mask_path), 2 * cfg.size_px) for it in items]
    synth_size = synth_size_px or cfg.synth.size_px
    # the scene recipe at the asked size (a SegmenterConfig would reset its synth size to the model's)
    scene_synth = dataclasses.replace(cfg.synth, size_px=synth_size)
    synth = val_scene_synthesizer(cfg, coins, backgrounds, scene_synth)
    synthetic, synthetic_all = [], []
    for i in range(n_synthetic):
        image, all_coins, main_mask = synth.scene(i)
        synthetic.append((image, main_mask))
        synthetic_all.append(all_coins)
    real = [(str(it.image_path), load_image(it.image_path), load_mask(it.mask_path))
            for it in _sample(items, n_real, cfg.seed)]
    distractor, distractor_all = [], []
    if n_distractor:
        multi = dataclasses.replace(scene_synth, multi_coin_p=1.0, extra_coins_p=0.0)
        synth_d = val_scene_synthesizer(cfg, coins, backgrounds, multi, seed_offset=DISTRACTOR_SEED_OFFSET + 1_000_003)
        for i in range(n_distractor):
            image, all_coins, main_mask = synth_d.scene(i)
            distractor.append((image, main_mask))
            distractor_all.append(all_coins)
    checked = []
    if handchecked is not None and Path(handchecked).is_file():
        accepted = read_handchecked(handchecked)
        checked = [(str(it.image_path), load_image(it.image_path), load_mask(it.mask_path)) for it in items
                   if (it.dataset, it.file) in accepted]
        notes.append(f"handchecked: {len(checked)} of {len(accepted)} accepted labels of {_rel(handchecked)} found in "
                     "the validation split")
    return EvalData(source, synthetic, real, synth_size, notes, distractor, checked, synthetic_all_coins=synthetic_all,
                    distractor_all_coins=distractor_all)


# ------------------------------------------------------------------------------------------------ metrics


def mask_iou(pred: np.ndarray | None, target: np.ndarray) -> float:
    """IoU of two boolean masks; no prediction is an empty mask; both empty scores 1."""
    if pred is None:
        return 1.0 if not target.any() else 0.0
    union = np.logical_or(pred, target).sum()
    return float(np.logical_and(pred, target).sum() / union) if union else 1.0


def _memoised(predict: Callable[[np.ndarray], np.ndarray]) -> tuple[Callable[[np.ndarray], np.ndarray], Callable]:
    """The first pass sees the same square at every threshold: run the model once per distinct input."""
    cache: dict[bytes, np.ndarray] = {}

    def run(square: np.ndarray) -> np.ndarray:
        key = hashlib.sha1(np.ascontiguousarray(square).tobytes()).digest()
        if key not in cache:
            cache[key] = predict(square)
        return cache[key]

    return run, cache.clear


def evaluate_model(model: SegModel, images: Sequence[tuple[np.ndarray, np.ndarray]],
                   thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """Mean IoU per (passes, threshold) over ``(image, target mask)`` pairs, both at the image's own size."""
    predict, clear = _memoised(model.segmenter.model.predict)
    memoised = Segmenter(dataclasses.replace(model.segmenter.model, predict=predict), model.segmenter.params)
    at_threshold = {t: memoised.with_params(threshold=t) for t in thresholds}
    ious = {(p, t): [] for p in (1, 2) for t in thresholds}
    missed = {(p, t): 0 for p in (1, 2) for t in thresholds}
    started = time.perf_counter()
    for image, target in images:
        for t in thresholds:
            seg = at_threshold[t].segment(image)
            for passes, mask in ((1, seg.first_pass_mask), (2, seg.mask)):
                ious[(passes, t)].append(mask_iou(mask, target))
                missed[(passes, t)] += mask is None
        clear()
    out: dict[str, Any] = {"images": len(images), "seconds": time.perf_counter() - started}
    for passes in (1, 2):
        key = f"{passes}_pass"
        out[key] = {f"iou@{t}": float(np.mean(ious[(passes, t)])) if images else float("nan") for t in thresholds}
        out[key].update({f"no_coin_frac@{t}": missed[(passes, t)] / max(1, len(images)) for t in thresholds})
        spread = out[f"{key}_spread"] = {}  # per-image IoU: median, share of images below 0.9
        spread.update({f"median_iou@{t}": float(np.median(ious[(passes, t)])) if images else float("nan")
                       for t in thresholds})
        spread.update({f"below_0.9@{t}": float(np.mean(np.asarray(ious[(passes, t)]) < 0.9)) if images else
                       float("nan") for t in thresholds})
    return out


# --------------------------------------------------------------------------------------------------- main


def _rel(path: str | Path) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def _candidates(args: argparse.Namespace) -> tuple[list[tuple[str, Callable[[], SegModel]]], list[dict[str, str]]]:
    """(model loaders to run, skipped entries with reasons)."""
    loaders: list[tuple[str, Callable[[], SegModel]]] = []
    skipped: list[dict[str, str]] = []
    checkpoint = Path(args.checkpoint) if args.checkpoint else release_checkpoint("segmenter", Path(args.models))
    if checkpoint is not None and checkpoint.is_file():
        loaders.append((str(checkpoint), lambda: torch_model(checkpoint, args.threads)))
    else:
        wanted = args.checkpoint or "runs/segmenter/*/best.pt"
        skipped.append({"model": "torch", "reason": f"no segmenter checkpoint ({wanted} not found)"})
    models_dir = Path(args.models)
    exported = discover_exported(models_dir)
    if args.exported is not None:
        exported = [p for p in exported if p.name in args.exported]
    for path in exported:
        loaders.append((str(path), lambda p=path: exported_model(p, args.threads)))
    for name in ("segmenter.onnx", "segmenter.tflite"):
        if args.exported is not None and name not in args.exported:
            continue
        if not (models_dir / name).is_file():
            skipped.append({"model": name, "reason": f"{_rel(models_dir / name)} not found"})
    return loaders, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 synthetic scenes + 100 real photos")
    parser.add_argument("--checkpoint", help="segmenter best.pt (default: the one --models was exported from)")
    parser.add_argument("--models", default=str(DEFAULT_MODELS), help="folder of exported segmenter.* files")
    parser.add_argument("--synthetic", type=int, help="synthetic scenes (default 500, quick 100)")
    parser.add_argument("--real", type=int, help="real photos (default all of the validation split, quick 100)")
    parser.add_argument("--synth-size-px", type=int, help="scene size (default: the config's, as in training)")
    parser.add_argument("--sample-data", action="store_true", help="use the bundled sample even if ../shared exists")
    parser.add_argument("--sample-root", default=str(SAMPLE_DATA), help="the bundled sample (fallback data)")
    parser.add_argument("--data-checkpoint",
                        help="checkpoint whose config defines the validation data and scene recipe (default: "
                             "--checkpoint's): checkpoints trained on other scene mixes scored on the same scenes")
    parser.add_argument("--data-config", help="segmenter config YAML that defines the validation data and scene recipe "
                                              "instead of a checkpoint's (e.g. models/release/training/"
                                              "segmenter.train_config.yaml)")
    parser.add_argument("--data-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of --data-config, e.g. synth.multi_coin_p=0.35 (the scenes of the model card)")
    parser.add_argument("--labels-dir", help="real-photo labels to score against (default: the checkpoint config's)")
    parser.add_argument("--exported", nargs="*", help="only these exported files of --models (e.g. segmenter.tflite)")
    parser.add_argument("--distractor", type=int, default=0, help="2-5 coin validation scenes (default 0)")
    parser.add_argument("--handchecked", default=str(HANDCHECKED),
                        help="hand-check CSV (dataset,file,verdict); accepted validation photos form their own set")
    parser.add_argument("--split-touching", choices=("off", "on", "both"), default="off",
                        help="cut touching coins before keeping the largest (off: as each model's metadata says; "
                             "both: each model without, then with)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/segmentation.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    seed_everything(args.seed)
    import cv2

    cv2.setNumThreads(args.threads)
    n_synth = args.synthetic if args.synthetic is not None else (100 if args.quick else 500)
    n_real = args.real if args.real is not None else (100 if args.quick else None)

    loaders, skipped = _candidates(args)
    models: list[SegModel] = []
    for source, load in loaders:
        try:
            models.append(load())
        except Exception as exc:  # a runtime missing or a broken file: record it, go on with the others
            skipped.append({"model": _rel(source), "reason": f"{type(exc).__name__}: {exc}"})
    for entry in skipped:
        print(f"skipped {entry['model']}: {entry['reason']}", flush=True)
    if not models:
        table = [{"model": e["model"], "data": "skipped", "images": e["reason"]} for e in skipped]
        path = write_result("segmentation", {"design_reference": DESIGN_REFERENCE, "models": [], "skipped": skipped},
                            table, args.out)
        print(f"nothing to evaluate; wrote {path}")
        return 0
    checkpoint = next((Path(m.path) for m in models if m.runtime == "torch"), None)
    size_px = models[0].size_px
    data_source = Path(args.data_checkpoint) if args.data_checkpoint else (ROOT / checkpoint if checkpoint else None)
    from coinvision.trainer.config_io import parse_overrides

    data_yaml = Path(args.data_config) if args.data_config else None
    cfg = data_config(data_source, size_px if size_px % 32 == 0 else 128, data_yaml, parse_overrides(args.data_set))
    if args.labels_dir:
        cfg = dataclasses.replace(cfg, labels_dir=_resolve(args.labels_dir))
    data = load_eval_data(cfg, n_synth, n_real, synth_size_px=args.synth_size_px, sample_root=Path(args.sample_root),
                          force_sample=args.sample_data, n_distractor=args.distractor, handchecked=args.handchecked)
    if args.split_touching != "off":  # both: each model without the split (whatever its metadata says), then with
        split = [m.with_split_touching(True) for m in models]
        plain = [m.with_split_touching(False) for m in models]
        models = split if args.split_touching == "on" else [v for pair in zip(plain, split, strict=True) for v in pair]
    for note in data.notes:
        print(f"note: {note}", flush=True)
    print(f"data: {data.source}; {len(data.synthetic)} synthetic scenes ({data.synth_size_px} px), "
          f"{len(data.real)} real photos at original size", flush=True)

    results: dict[str, Any] = {
        "design_reference": DESIGN_REFERENCE, "thresholds": THRESHOLDS, "data_source": data.source,
        "data_notes": data.notes, "synthetic_scenes": len(data.synthetic), "synth_size_px": data.synth_size_px,
        "real_photos": len(data.real), "real_photo_paths": [_rel(p) for p, _, _ in data.real],
        "distractor_scenes": len(data.distractor), "handchecked_photos": len(data.handchecked),
        "data_checkpoint": _rel(data_source) if data_source and not data_yaml else None,
        "data_config_file": _rel(data_yaml) if data_yaml else None, "data_set": args.data_set,
        "data_config": {"data_roots": cfg.data_roots, "labels_dir": cfg.labels_dir, "split_seed": cfg.split_seed,
                        "split_file": cfg.split_file, "seed": cfg.seed, "val_real": cfg.val_real},
        "models": [], "skipped": skipped,
    }
    table: list[dict[str, Any]] = []
    probe = data.real[0][1] if data.real else data.synthetic[0][0]
    failed: list[dict[str, str]] = []
    for model in models:
        try:
            check_model(model, probe)
        except RuntimeError as exc:
            failed.append({"model": model.name, "reason": str(exc)})
            print(f"FAILED {model.name}: {exc}", flush=True)
            continue
        entry = {"name": model.name, "runtime": model.runtime, "path": model.path, "fingerprint": model.fingerprint,
                 "quantization": model.quantization, "size_px": model.size_px, "margin_frac": model.margin_frac,
                 "split_touching": model.split_touching}
        sets = [("synthetic", data.synthetic), ("real", [(img, m) for _, img, m in data.real]),
                ("distractor", data.distractor), ("handchecked", [(img, m) for _, img, m in data.handchecked])]
        for split, images in sets:
            if not images:
                continue
            scores = evaluate_model(model, images)
            entry[split] = scores
            for passes in (1, 2):
                s = {**scores[f"{passes}_pass"], **scores[f"{passes}_pass_spread"]}
                table.append({"model": model.name, "data": split, "passes": passes, "IoU@0.3": s["iou@0.3"],
                              "IoU@0.5": s["iou@0.5"], "no coin @0.5": s["no_coin_frac@0.5"], "images": len(images)})
                print(f"  {model.name:<40} {split:<11} {passes} pass  IoU@0.3 {s['iou@0.3']:.4f}  IoU@0.5 "
                      f"{s['iou@0.5']:.4f}  median {s['median_iou@0.5']:.4f}  <0.9 {s['below_0.9@0.5']:.3f}  "
                      f"no coin {s['no_coin_frac@0.5']:.3f}  ({len(images)} images)", flush=True)
        results["models"].append(entry)
    table.append({"model": "design reference (their data)", "data": "", "passes": 2,
                  "IoU@0.3": DESIGN_REFERENCE["iou@0.3"], "IoU@0.5": DESIGN_REFERENCE["iou@0.5"]})
    for entry, status in [(e, "skipped") for e in skipped] + [(e, "failed") for e in failed]:
        table.append({"model": entry["model"], "data": status, "passes": "", "IoU@0.3": "", "IoU@0.5": "",
                      "no coin @0.5": "", "images": entry["reason"]})
    results["failed"] = failed
    path = write_result("segmentation", results, table, args.out)
    print(f"wrote {path}")
    return 1 if failed else 0  # a model that cannot load is recorded as skipped (with the reason), not a failure


if __name__ == "__main__":
    sys.exit(main())
