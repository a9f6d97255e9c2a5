"""The issue's bad-input list, each as a real file written here with Pillow: decoded correctly or refused with
an ImageError that names the file, never a PIL/numpy exception, and with bounded memory for huge photos."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from coinvision.sdk.errors import ImageError
from coinvision.sdk.images import MAX_WORKING_SIDE_PX, load_image
from PIL import Image

RED, BLUE = (220, 20, 30), (20, 40, 220)


def _png_claiming_size(width: int, height: int) -> bytes:
    """A valid PNG header (CRC fixed) that claims ``width x height``: a decompression bomb in a few bytes."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), RED).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    struct.pack_into(">II", data, 16, width, height)  # IHDR payload starts at byte 16
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_non_image_bytes_in_a_photo_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is a text file renamed to .jpg\n" * 20)
    with pytest.raises(ImageError, match=r"notes\.jpg: not a readable image"):
        load_image(path)


def test_zero_size_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(ImageError, match=r"empty\.png: file is empty"):
        load_image(path)


@pytest.mark.parametrize("side_px", [20_000, 10_000])
def test_huge_image_is_refused_by_pixel_count_before_decoding(tmp_path: Path, side_px: int) -> None:
    # 20000^2 trips Pillow's own bomb guard at open(), 10000^2 only ours: both must be our ImageError.
    path = tmp_path / f"huge{side_px}.png"
    path.write_bytes(_png_claiming_size(side_px, side_px))
    with pytest.raises(ImageError, match=rf"huge{side_px}\.png: .*64 MP limit.*downscale"):
        load_image(path)


_WRITE_JPEG = (
    "import sys; from PIL import Image; "
    "Image.new('RGB', (int(sys.argv[2]), int(sys.argv[3])), (220, 20, 30)).save(sys.argv[1], quality=80)"
)
_PEAK_RSS = (
    "import resource, sys; from coinvision.sdk.images import load_image; a = load_image(sys.argv[1]); "
    "print(a.shape[0], a.shape[1], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def _python(code: str, *args: object) -> str:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          check=True).stdout


def test_large_jpeg_is_downscaled_with_bounded_memory(tmp_path: Path) -> None:
    """A 62 MP phone-panorama-sized JPEG (just under the limit) decodes to the working size; decoding it whole
    would take ~250 MB (Pillow keeps RGB as 4 bytes/pixel). Each decode runs in a fresh process so the peak
    resident memory is the decode's own."""
    big, small = tmp_path / "big.jpg", tmp_path / "small.jpg"
    _python(_WRITE_JPEG, big, 8800, 7000)
    _python(_WRITE_JPEG, small, 400, 300)
    h, w, big_rss_kb = map(int, _python(_PEAK_RSS, big).split())
    _, _, baseline_rss_kb = map(int, _python(_PEAK_RSS, small).split())
    assert (w, h) == (MAX_WORKING_SIDE_PX, round(7000 * MAX_WORKING_SIDE_PX / 8800))
    # JPEG draft mode decodes at 1/4 scale here: the peak grows by far less than one full-size frame.
    assert (big_rss_kb - baseline_rss_kb) / 1024 < 80, (big_rss_kb, baseline_rss_kb)


def test_grayscale_photo_becomes_three_equal_channels(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (10, 1))
    Image.fromarray(gray, mode="L").save(path)
    rgb = load_image(path)
    assert rgb.shape == (10, 64, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "gray16.png"
    Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16)).save(path)
    rgb = load_image(path)
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 100, 255])


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    path = tmp_path / "cutout.png"
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[:, :3] = (*RED, 255)  # opaque left half
    rgba[:, 3:] = (*BLUE, 0)  # fully transparent right half
    Image.fromarray(rgba, mode="RGBA").save(path)
    rgb = load_image(path)
    assert rgb.shape == (4, 6, 3)
    assert (rgb[:, :3] == RED).all() and (rgb[:, 3:] == 255).all()


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    assert Image.open(path).mode == "CMYK"
    rgb = load_image(path).astype(int)
    assert rgb.shape == (16, 16, 3)
    assert np.abs(rgb.mean(axis=(0, 1)) - (255, 0, 0)).max() < 12


@pytest.mark.parametrize(
    ("orientation", "red_corner"),
    [(1, "top_left"), (3, "bottom_right"), (6, "top_right"), (8, "bottom_left")],
)
def test_exif_orientation_is_honoured(tmp_path: Path, orientation: int, red_corner: str) -> None:
    """A 60x40 landscape photo, red top-left quadrant, stored with an EXIF orientation tag as phones do."""
    stored = np.full((40, 60, 3), BLUE, np.uint8)
    stored[:20, :30] = RED
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"phone_{orientation}.jpg"
    img.save(path, exif=exif, quality=95)
    rgb = load_image(path)
    assert rgb.shape[:2] == ((40, 60) if orientation in (1, 3) else (60, 40))
    h, w = rgb.shape[:2]
    corners = {
        "top_left": rgb[: h // 4, : w // 4],
        "top_right": rgb[: h // 4, -w // 4 :],
        "bottom_left": rgb[-h // 4 :, : w // 4],
        "bottom_right": rgb[-h // 4 :, -w // 4 :],
    }
    for name, patch in corners.items():
        is_red = patch[..., 0].mean() > 150 and patch[..., 2].mean() < 100
        assert is_red == (name == red_corner), (name, patch.reshape(-1, 3).mean(axis=0))


def test_truncated_png_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match=r"cut\.png"):
        load_image(path)
