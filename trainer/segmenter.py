"""The segmenter's names for the callers not yet moved: the model lives in ``seg_model``, its training in
``seg_train``; inference is the SDK's ``Segmenter`` (PyTorch checkpoints: ``trainer.torch_runtime``).
"""

from __future__ import annotations

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
    "segmenter_metadata",
    "split_backgrounds",
    "split_seg_labels",
    "train_segmenter",
    "val_scene_synthesizer",
]
