"""Real photos -> the model-input squares the on-device pipeline feeds each model (for calibration and parity).

- segmenter: the letterboxed whole photo (``preprocess.letterbox``), i.e. the first pass.
- embedder: the background-removed coin crop (``preprocess.coin_crop``) with the mask of the two-pass
  segmentation when a segmenter is at hand (the SDK's ``Segmenter`` over the PyTorch segmenter of the same export
  run, ``trainer.torch_runtime``), else the letterboxed photo (what ``coin_crop`` does without a mask).

``to_model_input`` then turns a square into each format's tensor with that format's ``InputSpec``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from coinvision.sdk.errors import ConversionError, ImageError
from coinvision.sdk.files import list_images
from coinvision.sdk.images import load_image
from coinvision.sdk.preprocess import DEFAULT_CROP_MARGIN_FRAC, coin_crop, letterbox
from coinvision.sdk.segmenter import Segmentation

__all__ = [
    "PhotoSquares",
    "SegmentFn",
    "list_photos",
    "model_squares",
    "pick_evenly",
]

log = logging.getLogger(__name__)


SegmentFn = Callable[[np.ndarray], Segmentation]
"""A decoded photo -> its two-pass segmentation, e.g. ``coinvision.sdk.segmenter.Segmenter.segment``."""


@dataclass(frozen=True)
class PhotoSquares:
    """Model-input squares (uint8 RGB, ``size_px``) and the photos they came from (relative paths)."""

    squares: list[np.ndarray]
    sources: list[str]
    labels: list[str] | None  # parent folder of each photo relative to the root; None for a flat folder
    skipped: list[str]  # unreadable photos (relative path: reason)


def list_photos(root: str | Path, *, what: str = "photo folder") -> list[Path]:
    """Every image under ``root`` (recursive), sorted. Raises when the folder is missing."""
    root = Path(root)
    if not root.is_dir():
        raise ConversionError(f"{what} {root} does not exist; pass a folder of real photos (searched recursively)")
    return list_images(root, required=False)


def pick_evenly(paths: Sequence[Path], count: int) -> list[Path]:
    """``count`` paths spread evenly over the sorted list (so every class folder contributes), deterministic."""
    if count >= len(paths):
        return list(paths)
    step = len(paths) / count
    return [paths[int(i * step)] for i in range(count)]


def model_squares(
    kind: str,
    paths: Sequence[Path],
    root: str | Path,
    size_px: int,
    segment: SegmentFn | None = None,
    *,
    crop_margin_frac: float = DEFAULT_CROP_MARGIN_FRAC,
    interpolation: str = "bilinear",
) -> PhotoSquares:
    """Decode ``paths`` and make the squares ``kind`` sees at runtime. Unreadable photos are skipped, listed.
    ``crop_margin_frac`` / ``interpolation``: the embedder metadata's ``coin_crop`` margin and
    ``input.interpolation``."""
    root = Path(root)
    squares: list[np.ndarray] = []
    sources: list[str] = []
    labels: list[str] = []
    skipped: list[str] = []
    for path in paths:
        rel = path.relative_to(root)
        try:
            image = load_image(path)
        except ImageError as exc:
            skipped.append(f"{rel}: {exc}")
            continue
        if kind == "segmenter":
            square = letterbox(image, size_px)[0]
        else:
            mask = segment(image).mask if segment is not None else None
            square = coin_crop(image, mask, size_px, margin_frac=crop_margin_frac, interpolation=interpolation)
        squares.append(square)
        sources.append(rel.as_posix())
        labels.append(rel.parent.as_posix())
    if skipped:
        log.warning("%d unreadable photo(s) skipped under %s, e.g. %s", len(skipped), root, skipped[0])
    flat = all(label == "." for label in labels)
    return PhotoSquares(squares, sources, None if flat else labels, skipped)
