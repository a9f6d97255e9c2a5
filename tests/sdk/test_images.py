from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from coinvision.sdk.errors import ImageError
from coinvision.sdk.images import load_image
from PIL import Image

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample_coins"


def _photo() -> Path:
    return next((SAMPLE / "euro_phone" / "images").rglob("*.jpg"))


def test_load_image_reads_a_real_photo() -> None:
    arr = load_image(_photo())
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    assert load_image(path).shape[:2] == (40, 20)


def test_load_image_flattens_transparency_to_white() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buf, format="PNG")
    assert (load_image(buf.getvalue()) == 255).all()


def test_load_image_downscales_huge_photos() -> None:
    arr = load_image(np.zeros((3000, 1000, 3), np.uint8), max_side_px=1024)
    assert max(arr.shape[:2]) == 1024


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty input"),
        (b"GIF89a nonsense", "not a readable image"),
        (b"\xff\xd8\xff\xe0" + b"0" * 64, "cannot read image"),
    ],
)
def test_load_image_bad_bytes_raise_image_error(payload: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        load_image(payload)


def test_load_image_truncated_jpeg_names_the_fix(tmp_path: Path) -> None:
    data = _photo().read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match=r"cut\.jpg"):
        load_image(path)


def test_load_image_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg")


def test_a_decoded_photo_passes_through_without_a_copy() -> None:
    """The server decodes an upload once and embeds the array: load_image must not decode it again."""
    rgb = np.ascontiguousarray(np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8))
    assert load_image(rgb) is rgb
    big = np.zeros((3000, 100, 3), np.uint8)  # above the working size: still shrunk
    assert max(load_image(big).shape[:2]) == 2048
