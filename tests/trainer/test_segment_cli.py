"""`coinvision segment` works out of the box: with no --runtime it uses the SDK's default runtime (TFLite), which
the release ships, rather than a PyTorch checkpoint it does not."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from coinvision.cli.main import main


def test_segment_defaults_to_the_sdk_runtime(tiny_models_dir: Path, sample_root: Path, tmp_path: Path,
                                             capsys) -> None:
    assert not (tiny_models_dir / "segmenter.pt").exists()  # like models/release: exported files only
    images = sample_root / "euro_phone" / "images"
    out = tmp_path / "masks"
    rc = main(["segment", str(images), "--out", str(out), "--models", str(tiny_models_dir)])
    assert rc == 0, capsys.readouterr().err
    photos = sorted(images.rglob("*.jpg"))
    masks = sorted(out.rglob("*.png"))
    assert len(masks) == len(photos) == 40
    first = cv2.imread(str(masks[0]), cv2.IMREAD_GRAYSCALE)
    photo = cv2.imread(str(photos[0]))
    assert first.shape == photo.shape[:2] and set(np.unique(first)) <= {0, 255}
    assert f"wrote {len(photos)} mask(s)" in capsys.readouterr().out


def test_segment_with_a_missing_runtime_file_names_it(tmp_path: Path, sample_root: Path, capsys) -> None:
    rc = main(["segment", str(sample_root / "euro_phone" / "images"), "--out", str(tmp_path / "m"),
               "--models", str(tmp_path)])
    assert rc == 2
    assert "segmenter.tflite" in capsys.readouterr().err


def test_segment_with_the_release_models_finds_a_far_coin_in_the_tiles(tmp_path: Path, capsys) -> None:
    """The shipped default (no --models, no --runtime): a coin too small for the whole-photo pass gets its mask."""
    scenes = Path(__file__).resolve().parents[2] / "examples" / "sample_coins" / "scenes"
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "far_coin.png").write_bytes((scenes / "far_coin.png").read_bytes())
    rc = main(["segment", str(photos), "--out", str(tmp_path / "masks")])
    assert rc == 0, capsys.readouterr().err
    mask = cv2.imread(str(tmp_path / "masks" / "far_coin.png"), cv2.IMREAD_GRAYSCALE) > 0
    assert mask[72 : 72 + 78, 90 : 90 + 78].sum() >= 0.98 * mask.sum() > 0.8 * np.pi * 39**2  # compose.py's coin
    assert "no coin found in 0" in (out := capsys.readouterr().out) and "1 coin(s) found only by" in out
