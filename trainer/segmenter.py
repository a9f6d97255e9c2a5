"""Segmenter inference helpers in PyTorch and the ONNX/TFLite runners (being replaced by the one torch
pipeline). The model lives in ``seg_model``, its training in ``seg_train``; their names are re-exported here
for the callers not yet moved.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from coinvision.sdk.errors import ConfigError, DatasetError, ModelLoadError
from coinvision.sdk.images import load_image
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import InputSpec, Segmentation, to_model_input, two_pass_segment
from coinvision.trainer.seg_config import SegmenterConfig
from coinvision.trainer.seg_model import KIND, build_segmenter, count_parameters, load_segmenter, segmenter_metadata
from coinvision.trainer.seg_train import (
    IOU_THRESHOLDS,
    SegTrainSet,
    iou_at,
    letterbox_pair,
    split_backgrounds,
    split_seg_labels,
    train_segmenter,
    val_scene_synthesizer,
)
from torch import nn

__all__ = [
    "IOU_THRESHOLDS",
    "KIND",
    "SegTrainSet",
    "SegmenterConfig",
    "build_segmenter",
    "count_parameters",
    "iou_at",
    "letterbox_pair",
    "load_segmenter",
    "segment_image",
    "segmenter_metadata",
    "split_backgrounds",
    "split_seg_labels",
    "torch_predict_fn",
    "train_segmenter",
    "val_scene_synthesizer",
]

log = logging.getLogger(__name__)


def torch_predict_fn(model: nn.Module, spec: InputSpec, device: str | torch.device = "cpu"):
    """``PredictFn`` for ``two_pass_segment``: square uint8 RGB -> probability map (float32, same size)."""

    @torch.inference_mode()
    def predict(square: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(to_model_input(square, spec)).to(device)
        return torch.sigmoid(model(x))[0, 0].float().cpu().numpy()

    return predict


def segment_image(model: nn.Module, cfg: SegmenterConfig, image: np.ndarray, *, two_pass: bool = True) -> Segmentation:
    return two_pass_segment(image, torch_predict_fn(model, cfg.input_spec), size_px=cfg.size_px,
                            threshold=cfg.threshold, margin_frac=cfg.margin_frac, two_pass=two_pass,
                            split_touching=cfg.split_touching)


# --------------------------------------------------------------------------------------- folder inference

SUPPORTED_RUNTIMES = ("torch", "onnx", "tflite")


@dataclass(frozen=True)
class SegmenterRunner:
    """A ``PredictFn`` plus the post-processing values from the model's config / metadata."""

    predict: Any  # PredictFn
    size_px: int
    threshold: float
    margin_frac: float
    split_touching: bool = False

    def segment(self, image: np.ndarray, *, two_pass: bool = True) -> Segmentation:
        return two_pass_segment(image, self.predict, size_px=self.size_px, threshold=self.threshold,
                                margin_frac=self.margin_frac, two_pass=two_pass, split_touching=self.split_touching)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def load_runner(models_dir: str | Path, runtime: str = "torch", num_threads: int = 1) -> SegmenterRunner:
    """``segmenter.pt`` (torch) or ``segmenter.onnx`` / ``segmenter.tflite`` with its ``.meta.json``."""
    models_dir = Path(models_dir)
    if runtime not in SUPPORTED_RUNTIMES:
        raise ConfigError(f"runtime {runtime!r} is not one of {SUPPORTED_RUNTIMES}")
    if runtime == "torch":
        torch.set_num_threads(num_threads)
        model, cfg, _ = load_segmenter(models_dir / "segmenter.pt")
        return SegmenterRunner(torch_predict_fn(model, cfg.input_spec), cfg.size_px, cfg.threshold, cfg.margin_frac,
                               cfg.split_touching)
    path = models_dir / f"segmenter.{runtime}"
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist; export the segmenter first (coinvision export ...)")
    from coinvision.sdk.runtimes import predictor_for

    meta = ModelMetadata.read_sidecar(path)
    spec = meta.input
    run = predictor_for(path, num_threads)  # the SDK's runtime: layout, normalisation and int8 (de)quantization

    def predict(square: np.ndarray) -> np.ndarray:
        # NCHW 1xSxS or NHWC SxSx1: either way the map is the reshaped array
        return _sigmoid(np.asarray(run(square), np.float32).reshape(spec.size_px, spec.size_px))

    margin = float(meta.extra.get("margin_frac", 0.15))
    return SegmenterRunner(predict, spec.size_px, float(meta.threshold or 0.5), margin,
                           bool(meta.extra.get("split_touching", False)))


def segment_folder(image_dir: str | Path, out_dir: str | Path, *, runtime: str = "tflite",
                   models_dir: str | Path = "models/release", two_pass: bool = True,
                   progress: bool = True) -> tuple[int, int]:
    """One 0/255 PNG per image under ``image_dir`` (recursive), same relative path with ``.png``, same size as
    the image. Returns (masks written, images with no coin found - their masks are all 0)."""
    from coinvision.sdk.files import IMAGE_SUFFIXES
    from tqdm import tqdm

    image_dir, out_dir = Path(image_dir), Path(out_dir)
    if not image_dir.is_dir():
        raise DatasetError(f"image folder {image_dir} does not exist")
    files = sorted(p for p in image_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{image_dir}: no images (.jpg/.png/.webp/.bmp) found")
    runner = load_runner(models_dir, runtime)
    written = no_coin = 0
    for path in tqdm(files, desc="segment", disable=not progress):
        image = load_image(path)
        seg = runner.segment(image, two_pass=two_pass)
        mask = np.zeros(image.shape[:2], np.uint8) if seg.mask is None else seg.mask.astype(np.uint8) * 255
        no_coin += seg.mask is None
        target = out_dir / path.relative_to(image_dir).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(target), mask):
            raise DatasetError(f"could not write {target}; check the output folder is writable")
        written += 1
    return written, no_coin
