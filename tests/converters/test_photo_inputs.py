"""Calibration / parity inputs are made the way the on-device pipeline makes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from coinvision.converters.photo_inputs import list_photos, model_squares, pick_evenly
from coinvision.sdk.errors import ConversionError
from coinvision.sdk.images import load_image
from coinvision.sdk.preprocess import coin_crop, letterbox
from coinvision.sdk.segmenter import Segmentation


def test_pick_evenly_spreads_over_classes(sample_root: Path) -> None:
    photos = list_photos(sample_root / "euro_phone")
    picked = pick_evenly(photos, 8)
    assert len(picked) == 8 == len(set(picked))
    assert len({p.parent.name for p in picked}) == 8  # every class folder contributes
    assert pick_evenly(photos, 10_000) == photos
    with pytest.raises(ConversionError, match="does not exist"):
        list_photos(sample_root / "missing")


def test_segmenter_squares_are_letterboxed_photos(sample_root: Path) -> None:
    root = sample_root / "euro_phone"
    paths = pick_evenly(list_photos(root), 3)
    squares = model_squares("segmenter", paths, root, 64)
    for path, square, label in zip(paths, squares.squares, squares.labels or [], strict=True):
        np.testing.assert_array_equal(square, letterbox(load_image(path), 64)[0])
        assert label == path.parent.relative_to(root).as_posix()


def test_embedder_squares_are_background_removed_crops(sample_root: Path, tmp_path: Path) -> None:
    root = sample_root / "euro_phone"
    path = list_photos(root)[0]
    image = load_image(path)
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 4) ** 2

    squares = model_squares("embedder", [path], root, 64, segment=lambda img: Segmentation(disk, None, 2))
    np.testing.assert_array_equal(squares.squares[0], coin_crop(image, disk, 64))
    assert squares.squares[0][0, 0].tolist() == [0, 0, 0]  # background removed
    unsegmented = model_squares("embedder", [path], root, 64)  # no segmenter in the run: letterboxed photo
    np.testing.assert_array_equal(unsegmented.squares[0], letterbox(image, 64)[0])
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    flat = model_squares("segmenter", [tmp_path / "broken.jpg"], tmp_path, 64)
    assert flat.squares == [] and flat.skipped[0].startswith("broken.jpg: ")
